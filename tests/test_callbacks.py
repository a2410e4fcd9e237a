"""callback_url: the final task record is POSTed once when the task ends, retried until it is answered."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.helpers import wait_until


class Receiver:
    """A real HTTP server on 127.0.0.1 that records the bodies POSTed to it; fails the first `fail_first`."""

    def __init__(self, fail_first=0):
        self.bodies, self.calls, self.fail_first = [], 0, fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                if receiver.calls <= receiver.fail_first:
                    self.send_response(503)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_the_final_record_is_posted_to_the_callback_url_once(client, pickles, receiver):
    task_id = client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3},
                            callback_url=receiver.url)
    client.wait_result(task_id)
    wait_until(lambda: receiver.bodies, what="the callback")
    (body,) = receiver.bodies
    assert body["id"] == task_id and body["status"] == "DONE" and body["result"] == 6
    wait_until(lambda: client.task(task_id)["callback_sent_at"], what="the delivery to be recorded")
    assert receiver.calls == 1


def test_a_failed_task_is_posted_too_and_a_refusing_receiver_is_retried(client, pickles):
    receiver = Receiver(fail_first=1)
    try:
        task_id = client.submit("py36", pickles["py36"]["boom"], kwargs={"x": 1}, callback_url=receiver.url)
        assert client.wait_result(task_id)["status"] == "FAILED"
        wait_until(lambda: receiver.bodies, what="the retried callback")
        assert receiver.calls == 2 and receiver.bodies[0]["error"]["type"] == "ValueError"
    finally:
        receiver.close()
