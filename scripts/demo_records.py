"""Line-level building blocks of a Claude Code transcript: the envelope, compact JSON, the parentUuid chain."""

from __future__ import annotations

import json


def project_dir(cwd: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in cwd)


def dumps(rec) -> bytes:
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class Writer:
    """One transcript file: the envelope every line carries, the parentUuid chain, and the lines."""

    def __init__(self, sess: "Session", agent_id: str | None = None):
        self.s, self.agent_id = sess, agent_id
        self.lines: list[bytes] = []
        self.last: str | None = None

    def envelope(self, parent: str | None = "chain") -> dict:
        s = self.s
        rec = {"parentUuid": self.last if parent == "chain" else parent, "isSidechain": self.agent_id is not None,
               "userType": "external", "cwd": s.proj["cwd"], "sessionId": s.sid, "version": s.version,
               "gitBranch": s.branch}
        if self.agent_id:
            rec["agentId"] = self.agent_id
        if s.slug:
            rec["slug"] = s.slug
        return rec

    def emit(self, rec: dict, chain: bool = True) -> str:
        rec.setdefault("uuid", self.s.new_uuid())
        rec["timestamp"] = self.s.stamp()
        if self.s.newest and rec.get("type") in ("user", "assistant", "system", "progress"):
            rec["entrypoint"] = "cli"
        self.lines.append(dumps(rec))
        if chain:
            self.last = rec["uuid"]
        return rec["uuid"]

    def raw(self, data: bytes) -> None:
        self.lines.append(data)

    def user(self, content, parent="chain", **extra) -> str:
        rec = self.envelope(parent)
        rec.update(type="user", message={"role": "user", "content": content}, uuid=self.s.new_uuid())
        rec.update(extra)
        return self.emit(rec)

    def assistant(self, blocks, msg_id: str, req_id: str, stop=None, **extra) -> str:
        s = self.s
        usage = {"input_tokens": s.rng.randint(1, 9), "cache_creation_input_tokens": s.rng.randint(0, 9000),
                 "cache_read_input_tokens": s.rng.randint(9000, 160000), "output_tokens": s.rng.randint(1, 900)}
        rec = self.envelope()
        rec["message"] = {"model": s.model, "id": msg_id, "type": "message", "role": "assistant",
                          "content": blocks if isinstance(blocks, list) else [blocks], "stop_reason": stop,
                          "stop_sequence": None, "usage": usage}
        rec.update(requestId=req_id, type="assistant", **extra)
        return self.emit(rec)

    def progress(self, data: dict, tool_id: str, parent_tool_id: str) -> None:
        rec = self.envelope()
        rec.update(type="progress", data=data, toolUseID=tool_id, parentToolUseID=parent_tool_id)
        self.emit(rec)

    def system(self, subtype: str, parent="chain", **fields) -> str:
        rec = self.envelope(parent)
        rec.update(type="system", subtype=subtype, **fields)
        return self.emit(rec)
