"""Files (file_api, file_write): uploads, downloads, errors, listings.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import time

from agent_helpers import fparams

# ------------------------------------------------------------------------------------------------ files


def test_file_round_trip_text_and_binary(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "hello.txt")
    r = client.put("/api/v1/files", params=fparams(p), content=b"hello world\n")
    assert r.status_code == 204
    r = client.get("/api/v1/files", params=fparams(p))
    assert r.status_code == 200 and r.content == b"hello world\n"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == "12"
    blob = os.urandom(3 * 1024 * 1024 + 17)
    b = os.path.join(tmpdir_path, "deep", "er", "blob.bin")  # parents are created
    assert client.put("/api/v1/files", params=fparams(b), content=blob).status_code == 204
    assert client.get("/api/v1/files", params=fparams(b)).content == blob
    # overwrite keeps it atomic and leaves no temp files behind
    assert client.put("/api/v1/files", params=fparams(b), content=b"small").status_code == 204
    assert client.get("/api/v1/files", params=fparams(b)).content == b"small"
    assert os.listdir(os.path.dirname(b)) == ["blob.bin"]
    # empty file
    e = os.path.join(tmpdir_path, "empty")
    assert client.put("/api/v1/files", params=fparams(e), content=b"").status_code == 204
    r = client.get("/api/v1/files", params=fparams(e))
    assert r.status_code == 200 and r.content == b""


def test_file_upload_chunked(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "chunked.bin")
    parts = [os.urandom(100_000) for _ in range(5)]
    assert client.put("/api/v1/files", params=fparams(p), content=iter(parts)).status_code == 204
    assert open(p, "rb").read() == b"".join(parts)


def test_file_paths_with_spaces_and_unicode(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "dir with space", "naïve ☃ file.txt")
    assert client.put("/api/v1/files", params=fparams(p), content="snow ☃".encode()).status_code == 204
    assert client.get("/api/v1/files", params=fparams(p)).content == "snow ☃".encode()
    listing = client.get("/api/v1/files/list", params=fparams(os.path.dirname(p))).json()
    assert [e["name"] for e in listing["entries"]] == ["naïve ☃ file.txt"]
    assert client.delete("/api/v1/files", params=fparams(p)).status_code == 204
    assert not os.path.exists(p)


def test_file_errors(client, tmpdir_path):
    r = client.get("/api/v1/files", params=fparams("relative/path.txt"))
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    r = client.get("/api/v1/files")
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    r = client.put("/api/v1/files", params=fparams("rel"), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    missing = os.path.join(tmpdir_path, "nope")
    r = client.get("/api/v1/files", params=fparams(missing))
    assert r.status_code == 404 and r.json() == {"error": f"File not found: {missing}", "code": "NOT_FOUND"}
    r = client.delete("/api/v1/files", params=fparams(missing))
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.get("/api/v1/files/list", params=fparams(missing))
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.get("/api/v1/files", params=fparams(tmpdir_path))
    assert r.status_code == 400 and r.json()["code"] == "IS_DIRECTORY"
    r = client.put("/api/v1/files", params=fparams(tmpdir_path), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "IS_DIRECTORY"
    f = os.path.join(tmpdir_path, "afile")
    open(f, "w").close()
    r = client.get("/api/v1/files/list", params=fparams(f))
    assert r.status_code == 400 and r.json()["code"] == "NOT_A_DIRECTORY"
    r = client.put("/api/v1/files", params=fparams(f + "/child"), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "NOT_A_DIRECTORY"
    # keep-alive connection still healthy after error responses with unread bodies
    assert client.get("/api/v1/health").status_code == 200


def test_list_directory(client, tmpdir_path):
    os.makedirs(os.path.join(tmpdir_path, "bdir"))
    with open(os.path.join(tmpdir_path, "c.txt"), "wb") as f:
        f.write(b"12345")
    with open(os.path.join(tmpdir_path, "a.txt"), "wb") as f:
        f.write(b"1")
    r = client.get("/api/v1/files/list", params=fparams(tmpdir_path))
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == tmpdir_path
    entries = body["entries"]
    assert [e["name"] for e in entries] == ["a.txt", "bdir", "c.txt"]
    by = {e["name"]: e for e in entries}
    assert by["c.txt"] == {
        "name": "c.txt",
        "is_dir": False,
        "size": 5,
        "modified_at": by["c.txt"]["modified_at"],
    }
    assert by["bdir"]["is_dir"] is True
    assert abs(by["c.txt"]["modified_at"] - time.time() * 1000) < 60_000


def test_big_download_does_not_block_other_requests(agent, tmpdir_path):
    p = os.path.join(tmpdir_path, "big.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(1024 * 1024) * 32)
    with agent.make_client() as c, c.stream("GET", "/api/v1/files", params=fparams(p)) as r:
        assert int(r.headers["content-length"]) == 32 * 1024 * 1024
        it = r.iter_bytes()
        first = next(it)
        # the download is paused mid-way (client not reading); other requests are still served
        t0 = time.monotonic()
        assert agent.client.get("/api/v1/health").status_code == 200
        assert time.monotonic() - t0 < 1
        total = len(first) + sum(len(b) for b in it)
    assert total == 32 * 1024 * 1024
