// Node socket.io 4.8 peer for the benchmarks. Clients emit `join` with a room and get
// `joined`; POST /publish {"topic", "data"} emits `msg` to the room.
//   node bench/peers/socketio_server.js PORT
const http = require("http");
const { Server } = require("socket.io");

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const { topic, data } = JSON.parse(Buffer.concat(chunks).toString());
    io.to(topic).emit("msg", data);
    res.writeHead(202, { "content-type": "application/json" }).end("{}");
  });
});
const io = new Server(server, { transports: ["websocket"], perMessageDeflate: false });
io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
    socket.emit("joined", room);
  });
});
server.listen(Number(process.argv[2]), "127.0.0.1");
