// Raw Node `ws` 8 server, the reference for a fast runtime in the fan-out benchmark: every
// client is a subscriber; POST /publish {"topic", "data"} sends one JSON text frame to all.
//   node bench/peers/ws_server.js PORT
const http = require("http");
const { WebSocketServer, WebSocket } = require("ws");

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(req.url === "/health" ? 200 : 404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const { topic, data } = JSON.parse(Buffer.concat(chunks).toString());
    const frame = JSON.stringify({ type: "topicMessage", topic, data });
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(frame);
    }
    res.writeHead(202, { "content-type": "application/json" }).end("{}");
  });
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on("connection", (ws) => ws.send('{"type":"welcome"}'));
server.listen(Number(process.argv[2]), "127.0.0.1");
