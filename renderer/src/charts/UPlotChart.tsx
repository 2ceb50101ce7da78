// A uPlot chart owned by one component: made once, fed new data with setData (the store already
// batches updates to one per animation frame), resized with its box, destroyed on unmount.
import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface UPlotChartProps {
  /** Builds the options for a given width (series, axes, scales, hooks). */
  options: (width: number) => Omit<uPlot.Options, 'width' | 'height'>;
  data: uPlot.AlignedData;
  height?: number;
  /** A change here (a new migration) rebuilds the chart. */
  identity: string;
}

export function UPlotChart({ options, data, height = 220, identity }: UPlotChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current!;
    const width = Math.max(200, el.clientWidth);
    const u = new uPlot({ ...options(width), width, height }, data, el);
    plot.current = u;
    let pending: number | null = null;
    const ro = new ResizeObserver(() => {
      if (pending !== null) return;
      pending = requestAnimationFrame(() => {
        pending = null;
        u.setSize({ width: Math.max(200, el.clientWidth), height });
      });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      if (pending !== null) cancelAnimationFrame(pending);
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only for a new identity; data flows in through the effect below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [identity, height]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return <div ref={box} className="chart" />;
}
