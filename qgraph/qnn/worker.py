"""The QNN worker: one ONNX Runtime session on the QNN execution provider, in its own process.

Run by ``qgraph.qnn`` under an interpreter whose ``onnxruntime`` has the QNN execution
provider (``onnxruntime-qnn``: a plugin EP in 2.x, built in with 1.x), never imported by
qgraph itself: it imports only the standard library, numpy and onnxruntime, so that
environment needs nothing of qgraph's.

One process per configuration: QNN's backend settings (``htp_arch``, the backend library)
persist across sessions of one process, so two configurations in one process interfere.

Protocol (binary, on stdin / stdout; ONNX Runtime's and QNN's own logs go to stderr)::

    argv[1]: a JSON file {"model": path, "provider_options": {...}, "session_config": {...},
             "log": path (the verbose session log: where each node was placed)}
    -> one line of JSON on stdout: {"ok": true, "providers": [...], "inputs": [...], "outputs": [...]}
       or {"ok": false, "error": "..."}, then the process exits
    then, per run: an 8-byte little-endian length + an .npz of the feeds on stdin
    -> 8-byte length + an .npz of the outputs (or of {"__error__": message}) on stdout
    a length of 0 ends the process.
"""

import io
import json
import os
import struct
import sys


def _read_exact(stream, n):
    chunks = []
    while n:
        b = stream.read(n)
        if not b:
            raise EOFError("the parent closed the pipe")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _send(stream, data):
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _npz(arrays):
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _register(ort):
    """The QNN EP devices: the plugin library of ``onnxruntime_qnn`` (onnxruntime-qnn 2.x)
    registered with ONNX Runtime, or None where ``onnxruntime`` has the EP built in."""
    if "QNNExecutionProvider" in ort.get_available_providers():
        return None
    import onnxruntime_qnn

    ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    if not devices:
        raise RuntimeError("onnxruntime_qnn registered no QNNExecutionProvider device")
    return devices


def _session(req):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 0 if req.get("log") else 3  # verbose: the node placements
    so.log_verbosity_level = 0
    for k, v in req.get("session_config", {}).items():
        so.add_session_config_entry(str(k), str(v))
    options = {str(k): str(v) for k, v in req.get("provider_options", {}).items()}
    devices = _register(ort)
    if devices is None:
        return ort.InferenceSession(req["model"], so, providers=[("QNNExecutionProvider", options),
                                                                  "CPUExecutionProvider"])
    so.add_provider_for_devices(devices, options)
    return ort.InferenceSession(req["model"], so)


def main(argv):
    import numpy as np

    with open(argv[1]) as f:
        req = json.load(f)
    log = req.get("log")
    if log:  # ORT's C++ logger writes to file descriptor 2: send it to the log file
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    # the protocol gets a descriptor of its own: QNN's libraries print to file descriptor 1
    # (a "LIBNATIVE" line on load), which now goes where the log goes
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    try:
        sess = _session(req)
    except Exception as e:  # the parent words it: it knows which model and option
        out.write((json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n").encode())
        out.flush()
        return 1
    names = [o.name for o in sess.get_outputs()]
    hello = {"ok": True, "providers": sess.get_providers(), "inputs": [i.name for i in sess.get_inputs()],
             "outputs": names}
    out.write((json.dumps(hello) + "\n").encode())
    out.flush()
    stdin = sys.stdin.buffer
    while True:
        (n,) = struct.unpack("<Q", _read_exact(stdin, 8))
        if n == 0:
            return 0
        with np.load(io.BytesIO(_read_exact(stdin, n))) as z:
            feeds = {k: z[k] for k in z.files}
        try:
            result = dict(zip(names, sess.run(None, feeds)))
        except Exception as e:
            result = {"__error__": np.array(f"{type(e).__name__}: {e}")}
        _send(out, _npz(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
