// Browser-mode entry: connect to the lab over the page's own WebSocket, then show it.
import { createRoot } from 'react-dom/client';
import { connectWebSocket } from './api';
import { App } from './App';
import './styles.css';

const root = createRoot(document.getElementById('root')!);
connectWebSocket().then(
  (conn) => root.render(<App conn={conn} />),
  (err: Error) => root.render(<p role="alert" className="error">{err.message}</p>),
);
