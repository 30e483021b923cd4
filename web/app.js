// ringrouter chat page: plain JavaScript, no build step, no dependencies.
//
// Speaks the router's WebSocket protocol at ws(s)://<this host>/ws, subprotocol
// "ringrouter.v1.json": one ClientFrame / ServerFrame per text message, in the protobuf
// JSON mapping (lowerCamelCase names, enums by name, 64-bit integers as strings, bytes
// as base64, fields at their default left out). What a client must do, it does:
// - log in first (Login; Register before it under --auth accounts);
// - ack what it is delivered, cumulatively (Ack{upToSeq}): at once after ACK_EVERY
//   messages, else ACK_DELAY_MS after the first unacked one;
// - answer the router's Ping with a Pong; ping the router itself when it has heard
//   nothing for heartbeatMs (LoginResult), and give the connection up after
//   2 x heartbeatMs + 5 s of silence;
// - drop redeliveries: a message the router could not see acked comes again after a
//   reconnect, with the same (fromUser, msgId);
// - reconnect after a lost connection (backoff 0.5 s doubling to 10 s, with jitter),
//   and send again what it had sent without a SendResult (same msgId: recipients
//   drop the copy).
"use strict";

(() => {
  const SUBPROTOCOL = "ringrouter.v1.json";
  const ACK_EVERY = 64;
  const ACK_DELAY_MS = 100;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const MAX_ITEMS_PER_CONVERSATION = 1000;
  const MAX_REMEMBERED_IDS = 20000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    me: $("me"),
    connState: $("conn-state"),
    reconnectBtn: $("reconnect-btn"),
    logoutBtn: $("logout-btn"),
    loginView: $("login-view"),
    loginForm: $("login-form"),
    loginUser: $("login-user"),
    loginPassword: $("login-password"),
    loginToken: $("login-token"),
    loginDevice: $("login-device"),
    loginSubmit: $("login-submit"),
    registerBtn: $("register-btn"),
    loginError: $("login-error"),
    chatView: $("chat-view"),
    dmForm: $("dm-form"),
    dmUser: $("dm-user"),
    roomCreateForm: $("room-create-form"),
    roomCreateName: $("room-create-name"),
    roomCreatePassword: $("room-create-password"),
    roomJoinForm: $("room-join-form"),
    roomJoinName: $("room-join-name"),
    roomJoinPassword: $("room-join-password"),
    notice: $("notice"),
    conversations: $("conversations"),
    convTitle: $("conv-title"),
    convInfo: $("conv-info"),
    leaveRoomBtn: $("leave-room-btn"),
    messages: $("messages"),
    composer: $("composer"),
    messageInput: $("message-input"),
    sendBtn: $("send-btn"),
  };

  const state = {
    ws: null,
    // "connecting" | "online" | "closed"
    phase: "closed",
    // What the user logged in with, kept (in memory only) to log in again after a
    // reconnect; null once logged out or refused.
    creds: null,
    // Whether a login with these credentials has succeeded (then a lost connection is
    // retried; before, it is reported on the login form).
    loggedInOnce: false,
    me: "",
    device: "",
    maxFrameBytes: 1 << 20,
    heartbeatMs: 15000,
    lastRx: 0,
    pingNonce: 0,
    connects: 0,
    nextRequestId: 1,
    // requestId (string) -> function(kind, body) taking the answer frame.
    pending: new Map(),
    // Per session: the highest seq delivered and the highest acked.
    lastSeq: 0n,
    ackedSeq: 0n,
    ackTimer: null,
    heartbeatTimer: null,
    reconnectTimer: null,
    reconnectDelay: RECONNECT_MIN_MS,
    // (fromUser, msgId) of messages seen, to drop redeliveries; insertion-ordered.
    seen: new Set(),
    // key ("dm:bob", "room:team") -> conversation
    convs: new Map(),
    current: null,
    // Sends without a SendResult yet, in order.
    outbox: [],
  };

  // ------------------------------------------------------------------ encoding

  const encoder = new TextEncoder();
  const strictDecoder = new TextDecoder("utf-8", { fatal: true });

  function base64FromBytes(bytes) {
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(bin);
  }

  function bytesFromBase64(b64) {
    let s = b64.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  /** The text of a payload; a payload that is not UTF-8 is shown as its size. */
  function payloadText(b64) {
    let bytes;
    try {
      bytes = bytesFromBase64(b64 || "");
    } catch (_) {
      return { text: "[undecodable payload]", binary: true };
    }
    try {
      return { text: strictDecoder.decode(bytes), binary: false };
    } catch (_) {
      return { text: `[${bytes.length} bytes of binary data]`, binary: true };
    }
  }

  /** A random non-zero 64-bit message id, as the decimal string proto3 JSON uses. */
  function newMsgId() {
    const v = crypto.getRandomValues(new BigUint64Array(1))[0] | 1n;
    return v.toString();
  }

  function requestId() {
    return String(state.nextRequestId++);
  }

  /** "STATUS_NOT_FOUND" -> "NOT_FOUND"; an omitted status is STATUS_UNSPECIFIED. */
  function statusName(status) {
    return String(status ?? "STATUS_UNSPECIFIED").replace(/^STATUS_/, "");
  }

  function isOk(body) {
    return (body && body.status) === "STATUS_OK";
  }

  function failure(kind, body) {
    if (kind === "closed") return body.reason || "connection closed";
    const code = kind === "error" ? statusName(body.code) : statusName(body.status);
    return body.reason ? `${code}: ${body.reason}` : code;
  }

  // ----------------------------------------------------------------- connection

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function setPhase(phase, detail) {
    state.phase = phase;
    ui.connState.dataset.state = phase;
    ui.connState.textContent = detail ? `${phase} (${detail})` : phase;
    ui.reconnectBtn.hidden = !(phase === "closed" && state.creds && state.loggedInOnce);
    updateComposer();
  }

  function send(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.ws) return;
    setPhase("connecting");
    let ws;
    try {
      ws = new WebSocket(wsUrl(), [SUBPROTOCOL]);
    } catch (e) {
      loginFailed(`cannot connect: ${e.message}`);
      return;
    }
    state.ws = ws;
    // How many connections this page opened (a test reads it: no silent reconnects).
    state.connects++;
    ui.connState.dataset.connects = String(state.connects);
    state.lastSeq = 0n;
    state.ackedSeq = 0n;
    ws.onopen = () => {
      if (ws !== state.ws) return;
      state.lastRx = Date.now();
      if (ws.protocol !== SUBPROTOCOL) {
        dropConnection(ws, `the server chose subprotocol "${ws.protocol}"`);
        return;
      }
      if (!state.creds) {
        dropConnection(ws, "");
        return;
      }
      if (state.creds.register) {
        const rid = requestId();
        state.pending.set(rid, (kind, body) => {
          if (kind === "accountResult" && isOk(body)) {
            state.creds.register = false;
            sendLogin();
          } else {
            loginFailed(`could not create the account: ${failure(kind, body)}`);
          }
        });
        send({ register: { requestId: rid, user: state.creds.user, password: state.creds.password } });
      } else {
        sendLogin();
      }
    };
    ws.onmessage = (ev) => {
      if (ws !== state.ws) return;
      state.lastRx = Date.now();
      if (typeof ev.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (_) {
        console.warn("ringrouter: a frame that is not JSON", ev.data);
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (ws !== state.ws) return;
      connectionLost(ev.reason || (ev.code !== 1000 && ev.code !== 1005 ? `code ${ev.code}` : ""));
    };
    ws.onerror = () => {
      // onclose follows and does the work.
    };
  }

  function sendLogin() {
    const c = state.creds;
    const login = { requestId: requestId(), user: c.user, device: c.device };
    if (c.password) login.password = c.password;
    if (c.token) login.token = c.token;
    send({ login });
  }

  /** Closes `ws` without waiting for the closing handshake (a dead peer never answers). */
  function dropConnection(ws, why) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch (_) {
      /* closing anyway */
    }
    if (ws === state.ws) connectionLost(why);
  }

  function stopTimers() {
    clearInterval(state.heartbeatTimer);
    clearTimeout(state.ackTimer);
    state.heartbeatTimer = null;
    state.ackTimer = null;
  }

  function connectionLost(why) {
    state.ws = null;
    stopTimers();
    // Requests in flight get no answer now; sends stay in the outbox.
    const pending = [...state.pending.values()];
    state.pending.clear();
    for (const answer of pending) answer("closed", { reason: why || "connection closed" });
    if (!state.creds) {
      setPhase("closed");
      return;
    }
    if (!state.loggedInOnce) {
      loginFailed(why ? `connection closed: ${why}` : `cannot reach the router at ${wsUrl()}`);
      return;
    }
    for (const item of state.outbox) setItemState(item.entry, "pending", "waiting for the connection");
    const delay = Math.round(state.reconnectDelay * (0.75 + Math.random() * 0.5));
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, RECONNECT_MAX_MS);
    setPhase("closed", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
    if (why) notice(`Connection lost: ${why}`, true);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function loginFailed(message) {
    const ws = state.ws;
    state.creds = null;
    state.loggedInOnce = false;
    if (ws) dropConnection(ws, "");
    setPhase("closed");
    showLogin();
    ui.loginError.textContent = message;
    ui.loginError.hidden = false;
  }

  function startHeartbeat() {
    clearInterval(state.heartbeatTimer);
    const period = Math.max(1000, state.heartbeatMs);
    state.heartbeatTimer = setInterval(() => {
      const ws = state.ws;
      if (!ws) return;
      const quiet = Date.now() - state.lastRx;
      if (quiet > 2 * period + 5000) {
        dropConnection(ws, "no answer from the router");
      } else if (quiet >= period) {
        send({ ping: { nonce: String(++state.pingNonce) } });
      }
    }, Math.max(500, period / 4));
  }

  // ----------------------------------------------------------------------- acks

  function delivered(seq) {
    if (seq > state.lastSeq) state.lastSeq = seq;
    if (state.lastSeq - state.ackedSeq >= BigInt(ACK_EVERY)) {
      sendAck();
    } else if (!state.ackTimer) {
      state.ackTimer = setTimeout(sendAck, ACK_DELAY_MS);
    }
  }

  function sendAck() {
    clearTimeout(state.ackTimer);
    state.ackTimer = null;
    if (state.lastSeq > state.ackedSeq && send({ ack: { upToSeq: state.lastSeq.toString() } })) {
      state.ackedSeq = state.lastSeq;
    }
  }

  // --------------------------------------------------------------- server frames

  function onFrame(frame) {
    const kind = Object.keys(frame)[0];
    const body = frame[kind] || {};
    switch (kind) {
      case "loginResult":
        return onLoginResult(body);
      case "deliver":
        return onDeliver(body);
      case "ping":
        send({ pong: { nonce: body.nonce ?? "0" } });
        return;
      case "pong":
        return;
      case "roomEvent":
        return onRoomEvent(body);
      case "sendResult":
      case "roomResult":
      case "accountResult":
        return answer(kind, body);
      case "error":
        return onError(body);
      default:
        console.warn("ringrouter: unknown frame", frame);
    }
  }

  function answer(kind, body) {
    const rid = String(body.requestId ?? "0");
    const handler = state.pending.get(rid);
    if (!handler) return;
    state.pending.delete(rid);
    handler(kind, body);
  }

  function onError(body) {
    const rid = String(body.requestId ?? "0");
    if (rid !== "0" && state.pending.has(rid)) {
      answer("error", body);
      return;
    }
    if (state.phase === "connecting" && !state.loggedInOnce) {
      loginFailed(failure("error", body));
      return;
    }
    notice(failure("error", body), true);
  }

  function onLoginResult(body) {
    if (!isOk(body)) {
      loginFailed(`login refused: ${failure("loginResult", body)}`);
      return;
    }
    state.me = body.user || state.creds.user;
    state.device = body.device || state.creds.device;
    state.heartbeatMs = Number(body.heartbeatMs || 15000);
    state.maxFrameBytes = Number(body.maxFrameBytes || 1 << 20);
    state.loggedInOnce = true;
    state.reconnectDelay = RECONNECT_MIN_MS;
    ui.loginError.hidden = true;
    ui.me.textContent = `${state.me} (${state.device})`;
    ui.me.hidden = false;
    ui.logoutBtn.hidden = false;
    ui.loginView.hidden = true;
    ui.chatView.hidden = false;
    setPhase("online");
    startHeartbeat();
    listRooms();
    // Sends that got no SendResult before: once more, with their msgId.
    for (const item of state.outbox) transmit(item);
    renderConversations();
    if (!state.current) ui.dmUser.focus();
  }

  function onDeliver(d) {
    delivered(BigInt(d.seq ?? "0"));
    const from = d.fromUser ?? "";
    const msgId = d.msgId ?? "0";
    if (msgId !== "0" && !remember(`${from}\u0000${msgId}`)) return;
    // A copy of one's own direct message sent from another device: the conversation
    // is the recipient's.
    const peer = d.outgoing ? d.toUser ?? "" : from;
    const conv = d.toRoom ? conversation("room", d.toRoom) : conversation("dm", peer);
    const { text, binary } = payloadText(d.payload);
    const ts = d.serverTsUs ? Number(BigInt(d.serverTsUs) / 1000n) : Date.now();
    addItem(conv, { type: "msg", from, text, binary, msgId, seq: d.seq ?? "0", ts, mine: from === state.me });
  }

  /** Remembers a (sender, msgId) key; false when it was already known. */
  function remember(key) {
    if (state.seen.has(key)) return false;
    state.seen.add(key);
    if (state.seen.size > MAX_REMEMBERED_IDS) {
      state.seen.delete(state.seen.values().next().value);
    }
    return true;
  }

  const EVENT_TEXT = {
    ROOM_EVENT_JOINED: (u) => `${u} joined`,
    ROOM_EVENT_LEFT: (u) => `${u} left`,
    ROOM_EVENT_REMOVED: (u) => `${u} was removed`,
    ROOM_EVENT_DELETED: (u) => `the room was deleted by ${u}`,
  };

  function onRoomEvent(e) {
    // Events stored for an offline member carry a seq and are acked like messages.
    if (e.seq) delivered(BigInt(e.seq));
    const room = e.room ?? "";
    const user = e.user ?? "";
    const kind = String(e.kind ?? "ROOM_EVENT_UNSPECIFIED");
    const conv = conversation("room", room);
    if (user === state.me || kind === "ROOM_EVENT_DELETED") {
      if (kind === "ROOM_EVENT_JOINED") conv.left = false;
      else if (kind !== "ROOM_EVENT_UNSPECIFIED") conv.left = true;
    }
    const text = (EVENT_TEXT[kind] || ((u) => `${u}: ${kind}`))(user);
    addItem(conv, { type: "event", kind: kind.replace(/^ROOM_EVENT_/, "").toLowerCase(), user, text, ts: Date.now() });
    renderConversations();
    if (conv === state.current) renderHeader();
  }

  // ------------------------------------------------------------------- requests

  /** Sends a request frame; resolves with [answer kind, body] ("closed" if the
   *  connection went first). */
  function request(kind, body) {
    return new Promise((resolve) => {
      const rid = requestId();
      if (!send({ [kind]: { requestId: rid, ...body } })) {
        resolve(["closed", { reason: "not connected" }]);
        return;
      }
      state.pending.set(rid, (k, b) => resolve([k, b]));
    });
  }

  async function listRooms() {
    const [kind, body] = await request("listRooms", {});
    if (kind !== "roomResult" || !isOk(body)) return;
    for (const name of body.rooms || []) conversation("room", name).left = false;
    renderConversations();
  }

  /** CreateRoom or JoinRoom: on success the room's conversation opens (with its
   *  join code) and the form's inputs are emptied. */
  async function enterRoom(kind, body, what, inputs) {
    const [k, res] = await request(kind, body);
    if (k !== "roomResult" || !isOk(res)) {
      notice(`Could not ${what}: ${failure(k, res)}`, true);
      return;
    }
    const conv = conversation("room", res.room || body.name || body.room);
    conv.left = false;
    if (res.joinCode) conv.joinCode = res.joinCode;
    for (const input of inputs) input.value = "";
    notice(kind === "createRoom" ? `Created room ${conv.name}; join code ${conv.joinCode}` : `Joined room ${conv.name}`);
    select(conv);
  }

  function createRoom(name, password) {
    const body = password ? { name, password } : { name };
    enterRoom("createRoom", body, `create ${name}`, [ui.roomCreateName, ui.roomCreatePassword]);
  }

  function joinRoom(room, password) {
    const body = password ? { room, password } : { room };
    enterRoom("joinRoom", body, `join ${room}`, [ui.roomJoinName, ui.roomJoinPassword]);
  }

  async function leaveRoom(conv) {
    const [kind, body] = await request("leaveRoom", { room: conv.name });
    if (kind !== "roomResult" || !isOk(body)) {
      notice(`Could not leave ${conv.name}: ${failure(kind, body)}`, true);
      return;
    }
    conv.left = true;
    notice(`Left room ${conv.name}`);
    renderConversations();
    renderHeader();
  }

  // ---------------------------------------------------------------------- sends

  function sendMessage(conv, text) {
    const payload = encoder.encode(text);
    // The router bounds the JSON text message (base64 payload and all) by maxFrameBytes,
    // and closes the connection past it: refuse here instead.
    const frameBytes = 4 * Math.ceil(payload.length / 3) + 512;
    if (frameBytes > state.maxFrameBytes) {
      notice(`Message too large (${payload.length} bytes; frames are limited to ${state.maxFrameBytes} bytes)`, true);
      return false;
    }
    const msgId = newMsgId();
    remember(`${state.me}\u0000${msgId}`);
    const entry = addItem(conv, {
      type: "msg",
      from: state.me,
      text,
      msgId,
      ts: Date.now(),
      mine: true,
      state: "pending",
      stateText: "sending",
    });
    const item = { conv, msgId, payload: base64FromBytes(payload), entry };
    state.outbox.push(item);
    if (state.phase === "online") transmit(item);
    else setItemState(entry, "pending", "waiting for the connection");
    return true;
  }

  function transmit(item) {
    const rid = requestId();
    const to = item.conv.kind === "room" ? { toRoom: item.conv.name } : { toUser: item.conv.name };
    const frame = { send: { requestId: rid, ...to, payload: item.payload, wantResult: true, msgId: item.msgId } };
    if (!send(frame)) return;
    setItemState(item.entry, "pending", "sending");
    state.pending.set(rid, (kind, body) => {
      if (kind === "closed") return; // stays in the outbox, sent again after the reconnect
      const i = state.outbox.indexOf(item);
      if (i >= 0) state.outbox.splice(i, 1);
      if (kind === "sendResult" && isOk(body)) setItemState(item.entry, "sent", "sent");
      else setItemState(item.entry, "failed", `not sent: ${failure(kind, body)}`);
    });
  }

  // ------------------------------------------------------------- conversations

  function conversation(kind, name) {
    const key = `${kind}:${name}`;
    let conv = state.convs.get(key);
    if (!conv) {
      conv = { key, kind, name, items: [], unread: 0, joinCode: "", left: false };
      state.convs.set(key, conv);
      renderConversations();
    }
    return conv;
  }

  function addItem(conv, item) {
    conv.items.push(item);
    if (conv.items.length > MAX_ITEMS_PER_CONVERSATION) conv.items.shift();
    if (conv === state.current) {
      appendItem(item);
      while (ui.messages.children.length > MAX_ITEMS_PER_CONVERSATION) ui.messages.firstElementChild.remove();
    } else if (item.type === "msg" && !item.mine) {
      conv.unread++;
      renderConversations();
    }
    return item;
  }

  function setItemState(item, st, text) {
    item.state = st;
    item.stateText = text;
    if (item.el) renderItemState(item);
  }

  function select(conv) {
    state.current = conv;
    conv.unread = 0;
    renderConversations();
    renderHeader();
    ui.messages.replaceChildren();
    for (const item of conv.items) appendItem(item);
    updateComposer();
    if (!ui.messageInput.disabled) ui.messageInput.focus();
  }

  // ---------------------------------------------------------------- rendering

  function notice(text, isError) {
    ui.notice.textContent = text;
    ui.notice.classList.toggle("error", !!isError);
  }

  function renderConversations() {
    const items = [...state.convs.values()].sort((a, b) => a.key.localeCompare(b.key));
    ui.conversations.replaceChildren(
      ...items.map((conv) => {
        const li = document.createElement("li");
        const btn = document.createElement("button");
        btn.type = "button";
        btn.dataset.testid = "conv";
        btn.dataset.conv = conv.key;
        btn.dataset.unread = String(conv.unread);
        if (conv === state.current) btn.setAttribute("aria-current", "true");
        const name = document.createElement("span");
        name.className = conv.left ? "name left" : "name";
        const kind = document.createElement("span");
        kind.className = "kind";
        kind.textContent = conv.kind === "room" ? "room " : "user ";
        name.append(kind, conv.name);
        btn.append(name);
        let label = `${conv.kind === "room" ? "Room" : "Direct messages with"} ${conv.name}`;
        if (conv.left) label += " (left)";
        if (conv.unread) {
          const badge = document.createElement("span");
          badge.className = "unread";
          badge.textContent = String(conv.unread);
          btn.append(badge);
          label += `, ${conv.unread} unread`;
        }
        btn.setAttribute("aria-label", label);
        btn.addEventListener("click", () => select(conv));
        li.append(btn);
        return li;
      }),
    );
  }

  function renderHeader() {
    const conv = state.current;
    if (!conv) return;
    ui.convTitle.textContent = conv.kind === "room" ? `Room ${conv.name}` : `${conv.name}`;
    ui.convTitle.dataset.conv = conv.key;
    ui.convInfo.replaceChildren();
    if (conv.kind === "room") {
      if (conv.joinCode) {
        const code = document.createElement("span");
        code.id = "join-code";
        code.dataset.testid = "join-code";
        code.textContent = conv.joinCode;
        ui.convInfo.append("Join code ", code);
      }
      if (conv.left) ui.convInfo.append(conv.joinCode ? " · " : "", "you are not a member");
    } else {
      ui.convInfo.append("Direct messages");
    }
    ui.leaveRoomBtn.hidden = !(conv.kind === "room" && !conv.left);
    updateComposer();
  }

  function formatTime(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function appendItem(item) {
    const li = document.createElement("li");
    item.el = li;
    if (item.type === "event") {
      li.className = "event";
      li.dataset.testid = "room-event";
      li.dataset.kind = item.kind;
      li.dataset.user = item.user;
      li.textContent = `${item.text} · ${formatTime(item.ts)}`;
    } else {
      li.className = item.mine ? "msg mine" : "msg";
      li.dataset.testid = "message";
      li.dataset.from = item.from;
      li.dataset.msgId = item.msgId;
      const meta = document.createElement("div");
      meta.className = "meta";
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = item.mine ? `${item.from} (you)` : item.from;
      const time = document.createElement("time");
      time.dateTime = new Date(item.ts).toISOString();
      time.textContent = formatTime(item.ts);
      meta.append(from, time);
      if (item.mine && item.state) {
        const st = document.createElement("span");
        st.className = "state";
        meta.append(st);
      }
      const text = document.createElement("div");
      text.className = "text";
      text.dataset.testid = "message-text";
      text.textContent = item.text;
      li.append(meta, text);
      renderItemState(item);
    }
    const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    ui.messages.append(li);
    if (atBottom || item.mine) li.scrollIntoView({ block: "end" });
  }

  function renderItemState(item) {
    if (!item.el || !item.state) return;
    item.el.dataset.state = item.state;
    const st = item.el.querySelector(".state");
    if (!st) return;
    st.dataset.state = item.state;
    st.textContent = item.state === "sent" ? "✓ sent" : item.stateText;
  }

  function updateComposer() {
    const conv = state.current;
    // Sending while reconnecting is fine: the message waits in the outbox.
    const can = !!(conv && state.creds && state.loggedInOnce && !(conv.kind === "room" && conv.left));
    ui.messageInput.disabled = !can;
    ui.sendBtn.disabled = !can;
  }

  function showLogin() {
    ui.loginView.hidden = false;
    ui.chatView.hidden = true;
    ui.me.hidden = true;
    ui.logoutBtn.hidden = true;
    ui.loginSubmit.disabled = false;
    ui.registerBtn.disabled = false;
  }

  function resetSession() {
    state.me = "";
    state.convs.clear();
    state.current = null;
    state.outbox = [];
    state.seen.clear();
    ui.messages.replaceChildren();
    ui.conversations.replaceChildren();
    ui.convTitle.textContent = "No conversation open";
    ui.convInfo.replaceChildren();
    ui.leaveRoomBtn.hidden = true;
    notice("");
  }

  // ----------------------------------------------------------------- UI events

  function startLogin(register) {
    const creds = {
      user: ui.loginUser.value.trim(),
      password: ui.loginPassword.value,
      token: ui.loginToken.value.trim(),
      device: ui.loginDevice.value.trim() || "web",
      register,
    };
    ui.loginError.hidden = true;
    if (!creds.user && !creds.token) {
      ui.loginError.textContent = "Enter a user name (or a token).";
      ui.loginError.hidden = false;
      ui.loginUser.focus();
      return;
    }
    if (register && (!creds.user || !creds.password)) {
      ui.loginError.textContent = "Creating an account needs a user name and a password.";
      ui.loginError.hidden = false;
      return;
    }
    try {
      localStorage.setItem("ringrouter.user", creds.user);
      localStorage.setItem("ringrouter.device", creds.device);
    } catch (_) {
      /* storage may be off */
    }
    if (state.creds === null || state.me !== creds.user) resetSession();
    state.creds = creds;
    state.loggedInOnce = false;
    ui.loginSubmit.disabled = true;
    ui.registerBtn.disabled = true;
    if (state.ws) dropConnection(state.ws, "");
    connect();
  }

  ui.loginForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    startLogin(false);
  });
  ui.registerBtn.addEventListener("click", () => startLogin(true));

  ui.logoutBtn.addEventListener("click", () => {
    sendAck();
    send({ logout: {} });
    state.creds = null;
    state.loggedInOnce = false;
    clearTimeout(state.reconnectTimer);
    const ws = state.ws;
    if (ws) dropConnection(ws, "");
    setPhase("closed");
    resetSession();
    showLogin();
    ui.loginPassword.value = "";
    ui.loginUser.focus();
  });

  ui.reconnectBtn.addEventListener("click", () => {
    state.reconnectDelay = RECONNECT_MIN_MS;
    connect();
  });

  ui.dmForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = ui.dmUser.value.trim();
    if (!name) return;
    ui.dmUser.value = "";
    select(conversation("dm", name));
  });

  ui.roomCreateForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = ui.roomCreateName.value.trim();
    if (name) createRoom(name, ui.roomCreatePassword.value);
  });

  ui.roomJoinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = ui.roomJoinName.value.trim();
    if (room) joinRoom(room, ui.roomJoinPassword.value);
  });

  ui.leaveRoomBtn.addEventListener("click", () => {
    if (state.current && state.current.kind === "room") leaveRoom(state.current);
  });

  ui.composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.messageInput.value;
    if (!text.trim() || !state.current || ui.messageInput.disabled) return;
    if (sendMessage(state.current, text)) ui.messageInput.value = "";
    ui.messageInput.focus();
  });

  ui.messageInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  // Coming back online or to the tab: reconnect at once instead of waiting out the backoff.
  window.addEventListener("online", () => {
    if (state.creds && state.loggedInOnce && !state.ws) connect();
  });

  try {
    ui.loginUser.value = localStorage.getItem("ringrouter.user") || "";
    ui.loginDevice.value = localStorage.getItem("ringrouter.device") || "web";
  } catch (_) {
    /* storage may be off */
  }
  setPhase("closed");
})();
