import type { Duplex } from 'node:stream';

export interface StreamHandlers {
  data: (chunk: Buffer | string) => void;
  end: () => void;
  close: () => void;
  error: (err: Error) => void;
}

function ignore(): void {}

/**
 * Listens to a stream's data, end, close and error; the returned function stops listening.
 * After that a late error (EPIPE after destroy, say) is swallowed, never an uncaught exception.
 */
export function listenToStream(stream: Duplex, h: StreamHandlers): () => void {
  stream.on('data', h.data);
  stream.on('end', h.end);
  stream.on('close', h.close);
  stream.on('error', h.error);
  return () => {
    stream.off('data', h.data);
    stream.off('end', h.end);
    stream.off('close', h.close);
    stream.off('error', h.error);
    stream.on('error', ignore);
  };
}
