// Internal adapter interface shared by the transports (type-check only; the
// public API is declared in ../index.d.ts).

export interface SocketRequest {
  url: string;
  token: string;
  timeout: number;
  onOpen(): void;
  onMessage(text: string): void;
  onClose(info: { code: number; reason: string }): void;
  onError(err: unknown): void;
}

export interface SocketHandle {
  /** false when the frame could not be sent */
  send(text: string): boolean;
  /** closes the socket; no callback of this socket runs afterwards */
  close(code?: number, reason?: string): void;
}

export type OpenSocket = (req: SocketRequest) => SocketHandle;

export interface HttpResponse {
  status: number;
  body: any;
  header(name: string): string | undefined;
}

export interface HttpRequestHandle {
  promise: Promise<HttpResponse>;
  abort(): void;
}

export type HttpRequest = (req: { url: string; token?: string; timeout: number }) => HttpRequestHandle;

export interface LifecycleCallbacks {
  hide(): void;
  show(): void;
  online(): void;
  offline(): void;
}

export type Lifecycle = (cb: LifecycleCallbacks) => () => void;

export interface Transport {
  name: string;
  /** null where no socket can be opened (no wx.connectSocket, no WebSocket) */
  openSocket: OpenSocket | null;
  /** null where no HTTP request can be made (no wx.request, no fetch) */
  request: HttpRequest | null;
  lifecycle: Lifecycle;
}
