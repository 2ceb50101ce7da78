// The UI's entry: connect to the lab (window.lab in the app, a WebSocket in browser mode), then show it.
import { createRoot } from 'react-dom/client';
import { connectWebSocket, connectWindowLab, type LabConnection } from './api';
import { App } from './App';
import './styles.css';

const root = createRoot(document.getElementById('root')!);
// The desktop app provides window.lab; browser mode has the page's own WebSocket.
connectWindowLab().then((desktop): LabConnection | Promise<LabConnection> => desktop ?? connectWebSocket()).then(
  (conn) => root.render(<App conn={conn} />),
  (err: Error) => root.render(<p role="alert" className="error">{err.message}</p>),
);
