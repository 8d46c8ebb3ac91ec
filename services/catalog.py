"""The services `rlhf-loop run NAME` knows, by name. Modules are imported lazily so a
light service never pays for torch."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

SERVICES: dict[str, str] = {
    "capture": "services.capture.service",
    "sampler": "services.sampler.service",
    "annotation": "services.annotation.service",
    "trainer": "services.trainer.service",
    "policy-server": "services.policy_server.service",
    "event-logger": "services.event_logger.service",
    "demo": "services.demo.service",
    "vllm-deployer": "services.vllm_deployer.service",
}

# What `rlhf-loop up` starts by default: the whole loop on embedded parts. The vLLM
# deployer needs a vLLM server, so it only runs where one is configured.
EMBEDDED_LOOP: tuple[str, ...] = (
    "capture", "sampler", "annotation", "trainer", "policy-server", "event-logger", "demo",
)

# Settings that make the embedded demo complete cycles in minutes on a 2-core laptop
# (docs/trainer.md, "Choosing the defaults", has the measurements): every output
# sampled, training at 40 new preferences, a canary judged on few blind comparisons
# (looser error rates, half the requests answered by both versions, a 15-minute
# timeout that graduates), consumers
# that poll the embedded broker less often (their idle polling costs CPU that training
# needs). A variable already set in the environment wins.
DEMO_ENV: dict[str, str] = {
    "RLHF_SAMPLER__RULES": '[{"name": "demo-all", "strategy": "uniform", "rate": 1.0}]',
    "RLHF_SAMPLER__DEDUPE_WINDOW_S": "0",
    "RLHF_TRAINER__THRESHOLD": "40",
    "RLHF_TRAINER__MIN_INTERVAL_S": "30",
    "RLHF_TRAINER__CHECK_INTERVAL_S": "5",
    "RLHF_KAFKA__FETCH_MAX_WAIT_MS": "500",
    "RLHF_TRAINER__CANARY_FRACTION": "0.5",
    "RLHF_POLICY_SERVER__AB_SHARE": "0.5",
    "RLHF_TRAINER__CANARY_JUDGE__MIN_COMPARISONS": "8",
    "RLHF_TRAINER__CANARY_JUDGE__FALSE_GRADUATION_RATE": "0.1",
    "RLHF_TRAINER__CANARY_JUDGE__FALSE_ROLLBACK_RATE": "0.1",
    "RLHF_TRAINER__CANARY_JUDGE__MAX_DURATION_S": "900",
    "RLHF_POLICY_SERVER__CANARY_FRACTION": "0.5",  # a promotion found by reconciliation (its event lost)
    "RLHF_POLICY_SERVER__MAX_TOKENS_DEFAULT": "48",
    "RLHF_DEMO__REQUESTS_PER_S": "1.0",
}

ServiceMain = Callable[[threading.Event], None]


def dead_letter_topics() -> dict[str, str]:
    """The dead-letter topic of every consumer service a cluster runs, from each
    service's own default settings (what the Kubernetes KafkaTopics must declare,
    since production does not create topics)."""
    from services.annotation.settings import AnnotationOptions
    from services.event_logger.settings import EventLoggerOptions
    from services.policy_server.settings import PolicyServerOptions
    from services.sampler.settings import SamplerOptions
    from services.trainer.settings import TrainerOptions
    from services.vllm_deployer.settings import VllmDeployerOptions
    from shared.topics import dead_letter_topic

    groups = {"sampler": SamplerOptions().group_id, "annotation": AnnotationOptions().group_id,
              "trainer": TrainerOptions().group_id, "event-logger": EventLoggerOptions().group_id,
              "vllm-deployer": VllmDeployerOptions().group_id}
    return {**{name: dead_letter_topic(group) for name, group in groups.items()},
            "policy-server": PolicyServerOptions().dead_letter_topic}


class UnknownService(KeyError):
    def __str__(self) -> str:
        return f"unknown service {self.args[0]!r}; known: {', '.join(sorted(SERVICES))}"


def load(name: str) -> ServiceMain:
    try:
        module_name = SERVICES[name]
    except KeyError:
        raise UnknownService(name) from None
    main: ServiceMain = importlib.import_module(module_name).main
    return main
