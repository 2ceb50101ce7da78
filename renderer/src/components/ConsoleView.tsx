// A guest's serial console in xterm.js. The terminal is a class that owns xterm and its fit
// addon; React only hands it an element. The console follows the guest across hosts: the engine
// keeps one scrollback per guest, and the events carry it on from wherever the guest runs.
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef } from 'react';
import type { ApiEvent } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';

class GuestTerminal {
  private readonly term = new Terminal({ convertEol: false, fontSize: 13, scrollback: 5000, cursorBlink: true });
  private readonly fit = new FitAddon();
  private readonly offs: Array<() => void> = [];
  private timer: number | null = null;

  constructor(el: HTMLElement, conn: LabConnection, guest: string) {
    this.term.loadAddon(this.fit);
    this.term.open(el);
    this.fit.fit();
    const ro = new ResizeObserver(() => {
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = window.setTimeout(() => this.fit.fit(), 100);
    });
    ro.observe(el);
    this.offs.push(() => ro.disconnect());
    const buffered: string[] = [];
    let ready = false;
    this.offs.push(
      conn.onEvent((ev: ApiEvent) => {
        if (ev.type !== 'console' || ev.guest !== guest) return;
        if (ready) this.term.write(ev.data);
        else buffered.push(ev.data);
      }),
    );
    void conn.call({ type: 'consoleHistory', guest }).then(
      (h) => {
        this.term.write(h.text);
        ready = true;
        // What arrived while the history was on its way may already be in it; a little repeated
        // output is better than a hole.
        for (const d of buffered.splice(0)) this.term.write(d);
      },
      () => {
        ready = true;
      },
    );
    if (conn.role === 'teacher') {
      const sub = this.term.onData((data) => void conn.call({ type: 'consoleInput', guest, data }).catch(() => {}));
      this.offs.push(() => sub.dispose());
    }
  }

  dispose(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    for (const off of this.offs.splice(0)) off();
    this.term.dispose();
  }
}

export function ConsoleView({ conn, guest }: { conn: LabConnection; guest: string | null }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!guest || !box.current) return;
    const t = new GuestTerminal(box.current, conn, guest);
    return () => t.dispose();
  }, [conn, guest]);
  return (
    <section aria-label="Console" className="panel console">
      <h3>Console {guest ? <span className="detail">{guest} (ttyS0){conn.role === 'teacher' ? ': click and type' : ', read-only'}</span> : <span className="detail">select a guest</span>}</h3>
      <div ref={box} className="console-box" />
    </section>
  );
}
