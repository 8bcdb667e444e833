// k6 load for `bench/ingest.py --k6`: POST /notify, one notification per request, every answer
// checked (201). URL and TOKEN come from the environment (-e URL=… -e TOKEN=…).
import http from "k6/http";
import { check } from "k6";

const params = {
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${__ENV.TOKEN}` },
};

export default function () {
  const body = JSON.stringify({ user_id: `u${__VU}-${__ITER % 50}`, data: { i: __ITER } });
  const response = http.post(`${__ENV.URL}/notify`, body, params);
  check(response, { created: (r) => r.status === 201 });
}
