"""Pure operator logic: conditions, the Job→phase mapping, progress aggregation, watch lag,
settings. No servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sampleforge.api import ConditionStatus, ConditionType, Kind, Phase, Reason
from sampleforge.api.heartbeat import Heartbeat
from sampleforge.api.status import Condition, format_eta
from sampleforge.operator.conditions import ConditionUpdate, find, set_conditions
from sampleforge.operator.lifecycle import event_time, observe
from sampleforge.operator.podcreate import FailedCreateProbe, waiting_for_pods
from sampleforge.operator.progress import ProgressStore, run_key
from sampleforge.operator.settings import Settings
from sampleforge.operator.status import compose, current_status, status_patch
from sampleforge.operator.watchcheck import WatchLagTracker

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def job(conditions: list[dict[str, Any]] | None = None, suspend: bool = False, active: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "r-aug"}, "spec": {"suspend": suspend},
            "status": {"conditions": conditions or [], "active": active, "startTime": "2026-11-28T11:00:00Z"}}


def pod(phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "r-aug-0-x"}, "status": {"phase": phase, **status}}


class TestConditions:
    def test_transition_time_moves_only_when_status_changes(self) -> None:
        first = set_conditions([], [ConditionUpdate(ConditionType.READY, ConditionStatus.FALSE, Reason.JOB_PENDING,
                                                    "waiting")], 1, NOW)
        later = NOW + timedelta(minutes=5)
        same_status = set_conditions(first, [ConditionUpdate(ConditionType.READY, ConditionStatus.FALSE,
                                                             Reason.JOB_RUNNING, "running")], 2, later)
        ready = find(same_status, ConditionType.READY)
        assert ready is not None
        assert ready.to_kube()["lastTransitionTime"] == "2026-11-28T12:00:00Z"
        assert (ready.reason, ready.message, ready.observed_generation) == ("JobRunning", "running", 2)
        flipped = set_conditions(same_status, [ConditionUpdate(ConditionType.READY, ConditionStatus.TRUE,
                                                               Reason.SUCCEEDED, "done")], 2, later)
        assert find(flipped, ConditionType.READY).to_kube()["lastTransitionTime"] == "2026-11-28T12:05:00Z"  # type: ignore[union-attr]

    def test_unmentioned_conditions_are_kept_and_order_is_stable(self) -> None:
        current = [Condition.model_validate({"type": "Waiting", "status": "True", "reason": "X", "message": "",
                                             "lastTransitionTime": "2026-11-28T11:00:00Z", "observedGeneration": 1})]
        out = set_conditions(current, [ConditionUpdate(ConditionType.READY, ConditionStatus.FALSE, Reason.JOB_PENDING,
                                                       "")], 1, NOW)
        assert [c.type for c in out] == ["Ready", "Waiting"] and out[1] == current[0]


class TestObserve:
    def observe(self, j: dict[str, Any] | None, pods: list[dict[str, Any]], **kw: Any) -> Any:
        defaults: dict[str, Any] = {"suspended": False, "last_heartbeat": None, "heartbeat_timeout": 600.0,
                                    "now": NOW}
        return observe(j, pods, **{**defaults, **kw})

    def test_complete_job_succeeds_and_sets_kstatus(self) -> None:
        obs = self.observe(job([{"type": "Complete", "status": "True"}]), [])
        assert obs.phase is Phase.SUCCEEDED
        conds = {c.type: c.status for c in obs.conditions()}
        assert conds[ConditionType.READY] == ConditionStatus.TRUE
        assert conds[ConditionType.RECONCILING] == ConditionStatus.FALSE
        assert conds[ConditionType.STALLED] == ConditionStatus.FALSE

    def test_failed_job_names_the_oom_kill(self) -> None:
        oom = pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                                          "finishedAt": "2026-11-28T11:59:00Z"}}}])
        obs = self.observe(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                 "message": "Job has reached the specified backoff limit"}]), [oom])
        assert obs.phase is Phase.FAILED and obs.reason is Reason.OOM_KILLED
        assert "spec.resources.memory" in obs.message
        assert {c.type: c.status for c in obs.conditions()}[ConditionType.STALLED] == ConditionStatus.TRUE

    @pytest.mark.parametrize(("code", "reason"), [(2, Reason.INVALID_SPEC), (3, Reason.MODEL_UNAVAILABLE),
                                                  (4, Reason.DATASET_UNREADABLE), (1, Reason.JOB_FAILED)])
    def test_a_do_not_retry_exit_code_names_the_input_at_fault(self, code: int, reason: Reason) -> None:
        # The podFailurePolicy fails the Job on 2, 3 and 4 with reason PodFailurePolicy.
        died = pod("Failed", containerStatuses=[{"state": {"terminated": {
            "exitCode": code, "message": "spec.model s3://m/ has no config.json", "finishedAt": "2026-11-28T11:59:00Z"}}}])
        obs = self.observe(job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]), [died])
        assert (obs.phase, obs.reason) == (Phase.FAILED, reason)
        assert f"exited with code {code}: spec.model s3://m/ has no config.json" in obs.message

    def test_deadline_exceeded(self) -> None:
        obs = self.observe(job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]), [])
        assert obs.reason is Reason.DEADLINE_EXCEEDED

    def test_unschedulable_pod_is_explained(self) -> None:
        pending = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
        obs = self.observe(job(active=1), [pending])
        assert (obs.phase, obs.reason) == (Phase.PENDING, Reason.UNSCHEDULABLE)
        assert "Insufficient nvidia.com/gpu" in obs.message and "spec.resources" in obs.message

    def test_image_pull_error_is_stalled(self) -> None:
        pulling = pod("Pending", containerStatuses=[{"image": "bad:tag", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}])
        obs = self.observe(job(active=1), [pulling])
        assert obs.reason is Reason.IMAGE_PULL_ERROR
        assert {c.type: c.status for c in obs.conditions()}[ConditionType.STALLED] == ConditionStatus.TRUE

    def test_suspended_and_queued(self) -> None:
        assert self.observe(job(suspend=True), [], suspended=True).phase is Phase.SUSPENDED
        queued = self.observe(job(suspend=True), [], suspended=False)
        assert (queued.phase, queued.reason) == (Phase.PENDING, Reason.QUEUED)

    def test_running_until_heartbeats_stop(self) -> None:
        fresh = self.observe(job(active=1), [pod()], last_heartbeat=NOW - timedelta(seconds=30))
        assert fresh.phase is Phase.RUNNING
        stale = self.observe(job(active=1), [pod()], last_heartbeat=NOW - timedelta(seconds=700))
        assert (stale.phase, stale.reason) == (Phase.FAILED, Reason.HEARTBEAT_TIMEOUT)
        never = self.observe(job(active=1), [pod()])  # no heartbeat: the Job's start time counts (1 h ago)
        assert never.reason is Reason.HEARTBEAT_TIMEOUT

    def test_a_running_pod_seen_before_the_jobs_start_time_gives_the_run_its_start(self) -> None:
        """The Job controller writes the Job's startTime separately; a Running run always has one."""
        unstarted = job(active=1)
        del unstarted["status"]["startTime"]
        obs = self.observe(unstarted, [pod(startTime="2026-11-28T11:59:00Z")], last_heartbeat=NOW)
        assert (obs.phase, obs.start_time) == (Phase.RUNNING, "2026-11-28T11:59:00Z")

    def test_failed_pod_while_retrying_posts_a_warning(self) -> None:
        crashed = pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 1, "message": "boom"}}}])
        obs = self.observe(job(active=1), [crashed, pod()], last_heartbeat=NOW)
        assert obs.phase is Phase.RUNNING
        assert [e.type for e in obs.events] == ["Warning"] and "boom" in obs.events[0].message


QUOTA = ('Error creating: pods "r-aug-0-x7k2p" is forbidden: exceeded quota: no-pods, requested: pods=1, '
         'used: pods=0, limited: pods=0')


def failed_create(message: str = QUOTA, at: str = "2026-11-28T11:59:50Z") -> dict[str, Any]:
    """A FailedCreate Event on the Job as the Job controller records it (core/v1, serialized)."""
    return {"type": "Warning", "reason": "FailedCreate", "message": message, "count": 1,
            "firstTimestamp": at, "lastTimestamp": at, "involvedObject": {"kind": "Job", "name": "r-aug"}}


class TestPodCreateFailed:
    def observe(self, j: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> Any:
        return observe(j, pods, suspended=False, last_heartbeat=NOW, heartbeat_timeout=600.0, now=NOW,
                       job_events=events)

    def podless_job(self) -> dict[str, Any]:
        j = job()
        j["metadata"]["namespace"] = "search-ml"
        del j["status"]["startTime"]  # the Job controller sets none while it cannot create pods
        return j

    def test_a_quota_denial_is_stalled_pending_with_the_events_message(self) -> None:
        obs = self.observe(self.podless_job(), [], [failed_create(at="2026-11-28T11:59:40Z"), failed_create(
            QUOTA.replace("x7k2p", "q9w8e"))])
        assert (obs.phase, obs.reason) == (Phase.PENDING, Reason.POD_CREATE_FAILED)
        assert "exceeded quota: no-pods, requested: pods=1" in obs.message
        assert "Job r-aug" in obs.message and "namespace search-ml" in obs.message and "ResourceQuota" in obs.message
        # The generated pod name changes on every retry; the message must not (one write, one Event).
        assert "x7k2p" not in obs.message and "q9w8e" not in obs.message
        conds = {c.type: c for c in obs.conditions()}
        assert conds[ConditionType.STALLED].status == ConditionStatus.TRUE
        assert conds[ConditionType.READY].message == obs.message
        assert conds[ConditionType.RECONCILING].status == ConditionStatus.FALSE
        assert [(e.type, e.reason, e.message) for e in obs.events] == [("Warning", Reason.POD_CREATE_FAILED,
                                                                         obs.message)]

    @pytest.mark.parametrize(("message", "cause"), [
        (('Error creating: pods "r-aug-0-abcde" is forbidden: error looking up service account search-ml/trainer: '
          'serviceaccount "trainer" not found'), 'serviceaccount "trainer" not found'),
        ('Error creating: admission webhook "deny.example.com" denied the request: no GPUs on Fridays',
         'admission webhook "deny.example.com" denied the request'),
        (('Error creating: pods "r-aug-0-abcde" is forbidden: violates PodSecurity "restricted:latest": '
          'allowPrivilegeEscalation != false'), 'violates PodSecurity "restricted:latest"'),
    ])
    def test_other_refusals_keep_their_cause(self, message: str, cause: str) -> None:
        obs = self.observe(self.podless_job(), [], [failed_create(message)])
        assert obs.reason is Reason.POD_CREATE_FAILED and cause in obs.message
        assert "abcde" not in obs.message

    def test_a_pod_created_after_the_failure_makes_it_history(self) -> None:
        created = pod("Pending")
        created["metadata"]["creationTimestamp"] = "2026-11-28T11:59:55Z"
        obs = self.observe(self.podless_job(), [created], [failed_create(at="2026-11-28T11:59:50Z")])
        assert obs.reason is Reason.JOB_PENDING and not obs.events
        running = pod("Running")
        running["metadata"]["creationTimestamp"] = "2026-11-28T11:59:55Z"
        assert self.observe(job(active=1), [running], [failed_create()]).phase is Phase.RUNNING

    def test_a_resume_after_the_failure_makes_it_history(self) -> None:
        j = self.podless_job()
        j["status"]["conditions"] = [{"type": "Suspended", "status": "False", "reason": "JobResumed",
                                      "lastTransitionTime": "2026-11-28T11:59:59Z"}]
        assert self.observe(j, [], [failed_create(at="2026-11-28T11:59:50Z")]).reason is Reason.JOB_PENDING

    def test_other_events_and_no_events_explain_nothing(self) -> None:
        other = {**failed_create(), "reason": "SuccessfulCreate"}
        assert self.observe(self.podless_job(), [], [other]).reason is Reason.JOB_PENDING
        assert self.observe(self.podless_job(), [], []).reason is Reason.JOB_PENDING

    def test_pod_trouble_is_more_specific_than_a_later_refusal(self) -> None:
        pulling = pod("Pending", containerStatuses=[{"image": "bad:tag", "state": {"waiting": {
            "reason": "ImagePullBackOff"}}}])
        obs = self.observe(job(active=1), [pulling], [failed_create(at="2026-11-28T12:00:00Z")])
        assert obs.reason is Reason.IMAGE_PULL_ERROR

    def test_event_time_prefers_the_series_then_last_timestamp(self) -> None:
        series = {"series": {"lastObservedTime": "2026-11-28T11:59:58.123456Z"}, "eventTime": "2026-11-28T11:00:00Z"}
        assert event_time(series) == datetime(2026, 11, 28, 11, 59, 58, 123456, tzinfo=UTC)
        assert event_time({"eventTime": "2026-11-28T11:00:00+00:00"}) == datetime(2026, 11, 28, 11, tzinfo=UTC)
        assert event_time(failed_create(at="2026-11-28T11:59:50Z")) == datetime(2026, 11, 28, 11, 59, 50, tzinfo=UTC)
        assert event_time({}) is None


class TestFailedCreateProbe:
    def test_a_job_is_waiting_for_pods_only_when_it_should_have_some(self) -> None:
        assert waiting_for_pods(job(), [])
        assert waiting_for_pods(job(), [pod("Failed")]), "a failed pod is not a live one"
        assert not waiting_for_pods(job(), [pod("Pending")])
        assert not waiting_for_pods(job(suspend=True), [])
        assert not waiting_for_pods(job([{"type": "Complete", "status": "True"}]), [])

    def test_events_are_listed_after_a_grace_then_at_most_every_interval(self) -> None:
        probe = FailedCreateProbe(after=10, every=10)
        probe.track("job-1", waiting=False, now=0)
        assert probe.due_in(0) is None, "a Job with live pods costs no call"
        probe.track("job-1", waiting=True, now=5)
        assert probe.due_in(5) == 10 and probe.due_in(14) == 1
        assert probe.due_in(15) == 0
        probe.record([failed_create()], now=15)
        probe.track("job-1", waiting=True, now=16)
        assert probe.due_in(16) == 9 and len(probe.events) == 1, "the answer is kept between listings"
        probe.record(None, now=25)  # the listing failed: keep the last answer, wait a full interval
        assert len(probe.events) == 1 and probe.due_in(25) == 10

    def test_listings_that_find_nothing_back_off(self) -> None:
        probe = FailedCreateProbe(after=10, every=10, longest=60)
        probe.track("job-1", waiting=True, now=0)
        gaps, now = [], 10.0
        for _ in range(6):
            probe.record([], now=now)
            gap = probe.due_in(now)
            assert gap is not None
            gaps.append(gap)
            now += gap
        assert gaps == [10, 20, 40, 60, 60, 60]
        probe.record([failed_create()], now=now)
        assert probe.due_in(now) == 10, "once there is something to show, it is kept current"
        probe.track("job-1", waiting=False, now=now + 1)
        probe.track("job-1", waiting=True, now=now + 2)
        probe.record([], now=now + 12)
        assert probe.due_in(now + 12) == 10, "a new podless spell starts from the short interval"

    def test_live_pods_or_a_new_job_forget_the_answer(self) -> None:
        probe = FailedCreateProbe(after=10, every=10)
        probe.track("job-1", waiting=True, now=0)
        probe.record([failed_create()], now=10)
        probe.track("job-1", waiting=False, now=11)
        assert probe.events == [] and probe.due_in(11) is None
        probe.track("job-1", waiting=True, now=12)
        assert probe.due_in(12) == 10, "a new podless spell gets the full grace again"
        probe.record([failed_create()], now=22)
        probe.track("job-2", waiting=True, now=23)
        assert probe.events == [] and probe.due_in(23) == 10


class TestProgress:
    def beat(self, shard: int, done: int, total: int | None, rate: float | None, **kw: Any) -> Heartbeat:
        return Heartbeat.model_validate({"kind": "AugmentationRun", "namespace": "ns", "name": "r", "uid": "u1",
                                         "shard": shard, "shards": 2, "done": done, "total": total, "rate": rate,
                                         "sentAt": NOW, **kw})

    def test_shards_are_summed_once_all_report(self) -> None:
        store = ProgressStore()
        store.record(self.beat(0, 100, 400, 10.0, augmentation={"samplesOut": 150, "perAugmenter": {"typo": 50}}),
                     NOW)
        entry = store.get(run_key(Kind.AUGMENTATION_RUN, "ns", "r"), "u1")
        assert entry is not None
        assert entry.progress(Kind.AUGMENTATION_RUN).total is None  # one shard of two: no meaningful total yet
        store.record(self.beat(1, 300, 400, 30.0, augmentation={"samplesOut": 450, "perAugmenter": {"typo": 150,
                                                                                               "synonym": 5}}), NOW)
        progress = entry.progress(Kind.AUGMENTATION_RUN)
        assert (progress.done, progress.total, progress.percent, progress.rate) == (400, 800, 50, 40.0)
        assert progress.eta_seconds == 10 and progress.eta == "10s"
        results = entry.results(Kind.AUGMENTATION_RUN)
        assert results is not None and results.to_kube() == {
            "samplesOut": 600, "perAugmenter": {"synonym": 5, "typo": 200}, "filtered": {}}

    def test_a_recreated_run_starts_from_nothing(self) -> None:
        store = ProgressStore()
        store.record(self.beat(0, 100, 400, 1.0), NOW)
        fresh = self.beat(0, 5, 400, 1.0).model_copy(update={"uid": "u2"})
        store.record(fresh, NOW)
        key = run_key(Kind.AUGMENTATION_RUN, "ns", "r")
        assert store.get(key, "u1") is None
        assert store.get(key, "u2").progress(Kind.AUGMENTATION_RUN).done == 5  # type: ignore[union-attr]

    @pytest.mark.parametrize(("seconds", "text"), [(45, "45s"), (3060, "51m"), (7800, "2h10m")])
    def test_eta_format(self, seconds: int, text: str) -> None:
        assert format_eta(seconds) == text


class TestStatusCompose:
    def test_success_completes_progress(self) -> None:
        body = {"metadata": {"generation": 3}, "status": {"progress": {"done": 90, "total": 100, "percent": 90}}}
        obs = observe(job([{"type": "Complete", "status": "True"}]), [], suspended=False, last_heartbeat=None,
                      heartbeat_timeout=600, now=NOW)
        status = compose(Kind.AUGMENTATION_RUN, body, obs, NOW, job_name="r-aug")
        assert status.progress is not None and (status.progress.percent, status.progress.done) == (100, 100)
        assert status.observed_generation == 3 and status.completion_time is not None

    def test_a_finished_run_sends_its_stale_stage_as_null(self) -> None:
        body = {"metadata": {"generation": 1},
                "status": {"phase": "Running", "progress": {"done": 90, "total": 100, "stage": "training"}}}
        obs = observe(job([{"type": "Complete", "status": "True"}]), [], suspended=False, last_heartbeat=None,
                      heartbeat_timeout=600, now=NOW)
        status = compose(Kind.AUGMENTATION_RUN, body, obs, NOW)
        assert status.progress is not None and status.progress.stage is None
        patch = status_patch(body, status)
        assert patch["progress"]["stage"] is None, "a JSON merge patch keeps what it does not null"
        assert patch["progress"]["done"] == 100 and "startTime" in patch

    def test_a_status_edited_by_hand_keeps_only_what_validates(self) -> None:
        body = {"metadata": {"generation": 2, "name": "r"},
                "status": {"startTime": "2026-11-28T11:00:00Z", "progress": {"done": -5}, "jobName": "r-aug"}}
        current = current_status(Kind.AUGMENTATION_RUN, body)
        assert current.to_kube() == {"conditions": [], "startTime": "2026-11-28T11:00:00Z", "jobName": "r-aug"}


class TestWatchLag:
    def test_an_object_ahead_of_the_watch_for_too_long_is_unhealthy(self) -> None:
        tracker = WatchLagTracker(stale_after=60)
        assert tracker.update({"a": "5"}, {"a": "5"}, now=0)
        assert tracker.update({"a": "6"}, {"a": "5"}, now=10)  # just changed: the watch gets a moment
        assert not tracker.update({"a": "6"}, {"a": "5"}, now=80)
        assert tracker.lagging() == ["a"]
        assert tracker.update({"a": "6"}, {"a": "6"}, now=81)


class TestSettings:
    def test_environment_overrides(self) -> None:
        settings = Settings.from_env({"SAMPLEFORGE_OPERATOR_NAMESPACES": "a, b", "SAMPLEFORGE_OPERATOR_HTTP_PORT": "9",
                                      "SAMPLEFORGE_OPERATOR_LEADER_ELECTION": "false", "POD_NAMESPACE": "ops",
                                      "SAMPLEFORGE_OPERATOR_STATUS_MIN_INTERVAL_SECONDS": "2.5"})
        assert settings.namespaces == ("a", "b")
        assert (settings.http_port, settings.leader_election, settings.pod_namespace) == (9, False, "ops")
        assert settings.status_min_interval_seconds == 2.5
