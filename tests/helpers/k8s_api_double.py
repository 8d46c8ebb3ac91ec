"""A test double of the Kubernetes API server, for the trainer's Job executor.

No API server can run on these machines, so this is a small HTTP server that speaks
the real REST shapes of the few paths the `kubernetes` client calls (the client
deserialises every answer into its own models, so a wrong shape fails the test):

    POST   /apis/batch/v1/namespaces/{ns}/jobs            -> 201 Job
    GET    /apis/batch/v1/namespaces/{ns}/jobs            -> JobList, or with watch=true a
                                                             stream of watch events (chunked
                                                             JSON lines, resourceVersion,
                                                             timeoutSeconds, fieldSelector
                                                             metadata.name=..., 410 when too old)
    GET    /apis/batch/v1/namespaces/{ns}/jobs/{name}     -> Job, or 404 Status
    DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}     -> 200 Job (deletionTimestamp set);
                                                             records propagationPolicy
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=k=v -> PodList

Every body the client sends is validated against the Kubernetes 1.37 schema
(kubernetes_validate, strict); an invalid one is answered 422 and kept in `invalid`.

What stands in for the kubelet and the Job controller (`kubelet`, chosen per test):
  "run":        the pod's container command really runs, as a local subprocess
                ("python" is this interpreter), with the container's env (secretKeyRef
                values from `secrets`); PersistentVolumeClaims must be mounted at the
                host path given for them in `volumes` (no bind mounts here), so the
                job really reads its job file and publishes into the test's registry.
                Secret volumes (the Kafka CA) are not materialised.
  "oom":        the container is reported terminated OOMKilled (exit code 137).
  "evicted":    the pod is reported Failed, reason Evicted.
  "image_pull": the container waits in ErrImagePull forever (as a real Job does).
  "deadline":   the Job is reported Failed, reason DeadlineExceeded.
  "hang":       the pod runs until the Job is deleted.
Exit of the pod is then turned into the Job's status the way the Job controller
writes it (SuccessCriteriaMet/Complete, FailureTarget/Failed, BackoffLimitExceeded).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlparse

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.37.0"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def validate(doc: dict[str, Any], kind: str) -> None:
    """kubernetes_validate, strict; DeleteOptions (no apiVersion in the client's body) by its meta/v1 schema."""
    if kind == "DeleteOptions":
        import jsonschema
        from kubernetes_validate import utils
        from referencing import Registry, Resource

        folder = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
        schema = utils.schema_contents(f"{folder}/deleteoptions-meta-v1.json", K8S_VERSION)
        defs = utils.schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
        registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
        jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(doc)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


class KubeApiDouble:
    def __init__(self, *, kubelet: str = "run", secrets: dict[str, dict[str, str]] | None = None,
                 volumes: dict[str, Path] | None = None, start_delay_s: float = 0.2) -> None:
        self.kubelet = kubelet
        self.secrets = secrets or {}
        self.volumes = {k: Path(v) for k, v in (volumes or {}).items()}
        self.start_delay_s = start_delay_s
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []  # every Job body received, as sent
        self.deletions: list[dict[str, Any]] = []  # {namespace, name, propagationPolicy}
        self.invalid: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.verbs: set[tuple[str, str, str]] = set()  # (apiGroup, resource, verb): what RBAC must allow
        self.pod_logs: dict[str, Path] = {}
        self.log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"k8s-double-{uuid.uuid4().hex[:8]}"
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, namespace, type, job)
        self._rv = 100
        self._first_rv = 100
        self._cond = threading.Condition()
        self._procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> KubeApiDouble:
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configuration(self) -> Any:
        from kubernetes.client import Configuration

        configuration = Configuration()
        configuration.host = self.url
        return configuration

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(json.dumps({  # JSON is YAML
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "trainer", "user": {"token": "double-token"}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "trainer",
                                                        "namespace": namespace}}]}))
        return path

    def close(self) -> None:
        for process in list(self._procs.values()):
            if process.poll() is None:
                process.kill()
                process.wait()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, ns: str, kind: str, job: dict[str, Any]) -> None:
        """Under the condition: a new resourceVersion and a watch event for the job."""
        job["metadata"]["resourceVersion"] = self._bump()
        self._events.append((self._rv, ns, kind, copy.deepcopy(job)))
        self._cond.notify_all()

    def update_job(self, ns: str, name: str, change: Any) -> None:
        with self._cond:
            job = self.jobs.get((ns, name))
            if job is None or job["metadata"].get("deletionTimestamp"):
                return
            change(job["status"])
            self._emit(ns, "MODIFIED", job)

    def update_pod(self, ns: str, pod_name: str, status: dict[str, Any]) -> None:
        with self._cond:
            pod = self.pods.get((ns, pod_name))
            if pod is not None:
                pod["status"] = status
                pod["metadata"]["resourceVersion"] = self._bump()

    def job(self, ns: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            return copy.deepcopy(self.jobs.get((ns, name)))

    # -- what the API server does ---------------------------------------------------------

    def create_job(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            validate(body, "Job")
        except Exception as error:  # noqa: BLE001
            self.invalid.append(f"Job: {error}")
            return 422, status_body(422, "Invalid", f"Job is invalid: {error}")
        name = body["metadata"]["name"]
        with self._cond:
            if (ns, name) in self.jobs:
                return 409, status_body(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            self.created.append(copy.deepcopy(body))
            job = copy.deepcopy(body)
            uid = str(uuid.uuid4())
            job["metadata"].update(namespace=ns, uid=uid, creationTimestamp=now(), generation=1)
            job["spec"].setdefault("completions", 1)
            job["spec"].setdefault("parallelism", 1)
            job["spec"]["template"]["metadata"].setdefault("labels", {}).update(
                {"batch.kubernetes.io/job-name": name, "job-name": name, "controller-uid": uid})
            job["status"] = {}
            self.jobs[(ns, name)] = job
            self._emit(ns, "ADDED", job)
            answer = copy.deepcopy(job)
        threading.Thread(target=self._run_pod, args=(ns, name), daemon=True).start()
        return 201, answer

    def delete_job(self, ns: str, name: str, options: dict[str, Any], query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if options:
            try:
                validate(options, "DeleteOptions")
            except Exception as error:  # noqa: BLE001
                self.invalid.append(f"DeleteOptions: {error}")
                return 422, status_body(422, "Invalid", f"DeleteOptions is invalid: {error}")
        policy = options.get("propagationPolicy") or query.get("propagationPolicy")
        with self._cond:
            job = self.jobs.get((ns, name))
            if job is None:
                return 404, status_body(404, "NotFound", f'jobs.batch "{name}" not found')
            self.deletions.append({"namespace": ns, "name": name, "propagationPolicy": policy})
            job["metadata"]["deletionTimestamp"] = now()
            if policy == "Foreground":
                job["metadata"]["finalizers"] = ["foregroundDeletion"]
            self._emit(ns, "MODIFIED", job)
            answer = copy.deepcopy(job)
        threading.Thread(target=self._collect, args=(ns, name), daemon=True).start()
        return 200, answer

    def _collect(self, ns: str, name: str) -> None:
        """The garbage collector: the Job's pods go (their containers are killed), then the Job."""
        process = self._procs.pop((ns, name), None)
        if process is not None and process.poll() is None:
            process.terminate()  # the kubelet's SIGTERM
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with self._cond:
            for key in [k for k, p in self.pods.items() if k[0] == ns and p["metadata"]["labels"].get("job-name") == name]:
                del self.pods[key]
            job = self.jobs.pop((ns, name), None)
            if job is not None:
                job["metadata"].pop("finalizers", None)
                self._emit(ns, "DELETED", job)

    # -- the kubelet and the Job controller ---------------------------------------------------

    def _run_pod(self, ns: str, name: str) -> None:
        with self._cond:
            job = copy.deepcopy(self.jobs[(ns, name)])
        template = job["spec"]["template"]
        pod_name = f"{name[:57]}-{uuid.uuid4().hex[:5]}"
        [container] = template["spec"]["containers"]
        labels = template["metadata"]["labels"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "uid": str(uuid.uuid4()), "labels": labels,
                            "creationTimestamp": now(), "resourceVersion": "0",
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                 "uid": job["metadata"]["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": {**template["spec"], "nodeName": "double-node"},
               "status": {"phase": "Pending", "containerStatuses": [self._container(container, waiting={
                   "reason": "ContainerCreating"})]}}
        with self._cond:
            self.pods[(ns, pod_name)] = pod
        self.update_job(ns, name, lambda s: s.update(active=1, startTime=now(), ready=0, terminating=0,
                                                     uncountedTerminatedPods={}))
        time.sleep(self.start_delay_s)
        if self.kubelet == "image_pull":
            self.update_pod(ns, pod_name, {"phase": "Pending", "containerStatuses": [self._container(container, waiting={
                "reason": "ErrImagePull",
                "message": f'rpc error: code = NotFound desc = failed to pull image "{container["image"]}": not found'})]})
            return
        if self.kubelet == "deadline":
            self._job_failed(ns, name, "DeadlineExceeded", "Job was active longer than specified deadline")
            self._collect_pods(ns, pod_name)
            return
        running = {"phase": "Running", "startTime": now(),
                   "containerStatuses": [self._container(container, running={"startedAt": now()}, ready=True)]}
        self.update_pod(ns, pod_name, running)
        self.update_job(ns, name, lambda s: s.update(ready=1))
        if self.kubelet == "hang":
            return
        if self.kubelet == "oom":
            time.sleep(self.start_delay_s)
            self._terminated(ns, name, pod_name, container, 137, "OOMKilled")
            return
        if self.kubelet == "evicted":
            time.sleep(self.start_delay_s)
            self.update_pod(ns, pod_name, {
                "phase": "Failed", "reason": "Evicted",
                "message": "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi.",
                "containerStatuses": [self._container(container, terminated={
                    "exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": now(), "finishedAt": now()})]})
            self._job_failed(ns, name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        code = self._execute(ns, name, pod_name, container, template["spec"])
        if code is not None:
            self._terminated(ns, name, pod_name, container, code, "Completed" if code == 0 else "Error")

    def _collect_pods(self, ns: str, pod_name: str) -> None:
        with self._cond:
            self.pods.pop((ns, pod_name), None)

    def _execute(self, ns: str, name: str, pod_name: str, container: dict[str, Any],
                 pod_spec: dict[str, Any]) -> int | None:
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            claim = volumes[mount["name"]].get("persistentVolumeClaim")
            if claim and self.volumes.get(claim["claimName"]) != Path(mount["mountPath"]):
                raise AssertionError(f"claim {claim['claimName']} mounted at {mount['mountPath']}: the double only"
                                     f" mounts it at its host path {self.volumes.get(claim['claimName'])}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.secrets[ref["name"]][ref["key"]]
        command = [sys.executable if c == "python" else c for c in container["command"] + container.get("args", [])]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.pod_logs[pod_name] = self.log_dir / f"{pod_name}.log"
        with open(log_path, "wb") as log, self._cond:
            if (ns, name) not in self.jobs or self.jobs[(ns, name)]["metadata"].get("deletionTimestamp"):
                return None
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=ROOT)
            self._procs[(ns, name)] = process
        code = process.wait()
        with self._cond:
            deleted = self._procs.get((ns, name)) is not process
        return None if deleted else code

    def _terminated(self, ns: str, name: str, pod_name: str, container: dict[str, Any], code: int, reason: str) -> None:
        self.update_pod(ns, pod_name, {
            "phase": "Succeeded" if code == 0 else "Failed", "startTime": now(),
            "containerStatuses": [self._container(container, terminated={
                "exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()})]})
        if code == 0:
            self.update_job(ns, name, lambda s: s.update(
                active=0, ready=0, succeeded=1, completionTime=now(), conditions=[
                    self._condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                    self._condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]))
        else:
            self._job_failed(ns, name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    def _job_failed(self, ns: str, name: str, reason: str, message: str) -> None:
        self.update_job(ns, name, lambda s: s.update(active=0, ready=0, failed=1, conditions=[
            self._condition("FailureTarget", reason, message), self._condition("Failed", reason, message)]))

    @staticmethod
    def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": now(), "lastTransitionTime": now()}

    @staticmethod
    def _container(container: dict[str, Any], ready: bool = False, **state: Any) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": ready,
                "restartCount": 0, "started": "running" in state, "state": state}

    # -- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}") if length else {}

            def _route(self) -> tuple[list[str], dict[str, str]]:
                url = urlparse(self.path)
                double.requests.append((self.command, url.path))
                parts, query = url.path.strip("/").split("/"), {k: v[-1] for k, v in parse_qs(url.query).items()}
                # (apiGroup, resource, verb) as RBAC sees the request
                group, rest = (parts[1], parts[3:]) if parts[0] == "apis" else ("", parts[2:])
                verb = {"POST": "create", "DELETE": "delete"}.get(self.command) or (
                    "get" if len(rest) > 3 else "watch" if query.get("watch", "").lower() in ("true", "1") else "list")
                double.verbs.add((group, rest[2] if len(rest) > 2 else rest[-1], verb))
                return parts, query

            def do_POST(self) -> None:
                parts, _ = self._route()
                if parts[:3] == ["apis", "batch", "v1"] and len(parts) == 6 and parts[5] == "jobs":
                    self._send(*double.create_job(parts[4], self._body()))
                else:
                    self._send(404, status_body(404, "NotFound", f"no route {self.path}"))

            def do_DELETE(self) -> None:
                parts, query = self._route()
                if parts[:3] == ["apis", "batch", "v1"] and len(parts) == 7 and parts[5] == "jobs":
                    self._send(*double.delete_job(parts[4], parts[6], self._body(), query))
                else:
                    self._send(404, status_body(404, "NotFound", f"no route {self.path}"))

            def do_GET(self) -> None:
                parts, query = self._route()
                if parts[:3] == ["apis", "batch", "v1"] and len(parts) == 7 and parts[5] == "jobs":
                    job = double.job(parts[4], parts[6])
                    self._send(200, job) if job else self._send(
                        404, status_body(404, "NotFound", f'jobs.batch "{parts[6]}" not found'))
                elif parts[:3] == ["apis", "batch", "v1"] and len(parts) == 6 and parts[5] == "jobs":
                    if query.get("watch", "").lower() in ("true", "1"):
                        self._watch(parts[4], query)
                    else:
                        with double._cond:
                            items = [copy.deepcopy(j) for (ns, _), j in double.jobs.items() if ns == parts[4]
                                     and self._selected(j, query)]
                            version = str(double._rv)
                        self._send(200, {"kind": "JobList", "apiVersion": "batch/v1",
                                         "metadata": {"resourceVersion": version}, "items": items})
                elif parts[:2] == ["api", "v1"] and len(parts) == 5 and parts[4] == "pods":
                    with double._cond:
                        items = [copy.deepcopy(p) for (ns, _), p in double.pods.items() if ns == parts[3]
                                 and self._selected(p, query)]
                        version = str(double._rv)
                    self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": version}, "items": items})
                else:
                    self._send(404, status_body(404, "NotFound", f"no route {self.path}"))

            @staticmethod
            def _selected(obj: dict[str, Any], query: dict[str, str]) -> bool:
                for term in filter(None, query.get("labelSelector", "").split(",")):
                    key, _, value = term.partition("=")
                    if obj["metadata"].get("labels", {}).get(key) != value:
                        return False
                for term in filter(None, query.get("fieldSelector", "").split(",")):
                    key, _, value = term.partition("=")
                    assert key == "metadata.name", f"the double knows only metadata.name field selectors: {key}"
                    if obj["metadata"]["name"] != value:
                        return False
                return True

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, ns: str, query: dict[str, str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))
                try:
                    with double._cond:
                        if query.get("resourceVersion"):
                            since = int(query["resourceVersion"])
                            if since < double._first_rv:
                                self._chunk({"type": "ERROR", "object": status_body(
                                    410, "Expired", f"too old resource version: {since} ({double._first_rv})")})
                                since = None
                        else:  # no resourceVersion: what exists now, as ADDED, then changes
                            since = double._rv
                            for (job_ns, _), job in double.jobs.items():
                                if job_ns == ns and self._selected(job, query):
                                    self._chunk({"type": "ADDED", "object": copy.deepcopy(job)})
                        while since is not None and (left := deadline - time.monotonic()) > 0:
                            events = [e for e in double._events if e[0] > since and e[1] == ns
                                      and self._selected(e[3], query)]
                            since = max([since] + [e[0] for e in double._events])
                            for _, _, kind, job in events:
                                self._chunk({"type": kind, "object": job})
                            if not events:
                                double._cond.wait(min(left, 0.5))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
