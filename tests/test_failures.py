"""Each way a task can fail ends FAILED with the right error type, and the runner survives all of them."""


def runner_pids(client, worker):
    return {r["pid"] for r in client.live_runners(worker)}


def test_a_raised_exception_ends_FAILED_with_type_message_and_full_traceback(client, pickles):
    for worker in ("py36", "py38"):
        out = client.wait_result(client.submit(worker, pickles[worker]["boom"], kwargs={"x": 5}))
        assert out["status"] == "FAILED"
        err = out["error"]
        assert err["type"] == "ValueError" and err["message"] == "bad x: 5"
        assert err["traceback"].startswith("Traceback (most recent call last):")
        assert "raise ValueError('bad x: %r' % (x,))" in err["traceback"] or "in run" in err["traceback"]
        assert err["traceback"].rstrip().endswith("ValueError: bad x: 5")


def test_os_exit_ends_FAILED_ProcessDied_with_the_exit_code_and_the_runner_survives(client, pickles):
    before = runner_pids(client, "py36")
    out = client.wait_result(client.submit("py36", pickles["py36"]["exit"]))
    assert out["status"] == "FAILED" and out["error"]["type"] == "ProcessDied"
    assert "exited with code 7" in out["error"]["message"], out
    assert runner_pids(client, "py36") == before
    assert client.wait_result(client.submit("py36", pickles["py36"]["add"], kwargs={"x": 1, "y": 2, "z": 3}))["result"] == 6


def test_a_segfault_ends_FAILED_ProcessDied_naming_the_signal_and_the_runner_survives(client, pickles):
    before = runner_pids(client, "py38")
    task_id = client.submit("py38", pickles["py38"]["segfault"])
    out = client.wait_result(task_id)
    assert out["status"] == "FAILED" and out["error"]["type"] == "ProcessDied"
    assert "SIGSEGV" in out["error"]["message"], out
    # poison_crashes=2 on the shared supervisor: it was tried twice, then quarantined with both crashes recorded
    rec = client.task(task_id)
    assert len(rec["crashes"]) == 2 and all(c["signal"] == "SIGSEGV" for c in rec["crashes"])
    assert runner_pids(client, "py38") == before
    assert client.wait_result(client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3}))["result"] == 6


def test_a_task_past_its_timeout_is_killed_and_ends_FAILED_TimeoutError(client, pickles):
    before = runner_pids(client, "py36")
    out = client.wait_result(client.submit("py36", pickles["py36"]["sleep"], kwargs={"s": 60}, timeout_s=0.5))
    assert out["status"] == "FAILED" and out["error"]["type"] == "TimeoutError"
    assert "0.5" in out["error"]["message"]
    assert runner_pids(client, "py36") == before
    assert client.wait_result(client.submit("py36", pickles["py36"]["add"], kwargs={"x": 1, "y": 2, "z": 3}))["result"] == 6


def test_a_call_with_wrong_kwargs_fails_with_the_functions_TypeError(client, pickles):
    out = client.wait_result(client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1}))
    assert out["status"] == "FAILED" and out["error"]["type"] == "TypeError"
    assert "y" in out["error"]["message"]
