import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobRunOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_RUN_OUTCOME_UNSPECIFIED: _ClassVar[JobRunOutcome]
    JOB_RUN_OUTCOME_SUCCEEDED: _ClassVar[JobRunOutcome]
    JOB_RUN_OUTCOME_FAILED: _ClassVar[JobRunOutcome]
    JOB_RUN_OUTCOME_SKIPPED: _ClassVar[JobRunOutcome]
    JOB_RUN_OUTCOME_RUNNING: _ClassVar[JobRunOutcome]

class JobTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_TRIGGER_UNSPECIFIED: _ClassVar[JobTrigger]
    JOB_TRIGGER_SCHEDULE: _ClassVar[JobTrigger]
    JOB_TRIGGER_MANUAL: _ClassVar[JobTrigger]
    JOB_TRIGGER_STARTUP: _ClassVar[JobTrigger]
JOB_RUN_OUTCOME_UNSPECIFIED: JobRunOutcome
JOB_RUN_OUTCOME_SUCCEEDED: JobRunOutcome
JOB_RUN_OUTCOME_FAILED: JobRunOutcome
JOB_RUN_OUTCOME_SKIPPED: JobRunOutcome
JOB_RUN_OUTCOME_RUNNING: JobRunOutcome
JOB_TRIGGER_UNSPECIFIED: JobTrigger
JOB_TRIGGER_SCHEDULE: JobTrigger
JOB_TRIGGER_MANUAL: JobTrigger
JOB_TRIGGER_STARTUP: JobTrigger

class Job(_message.Message):
    __slots__ = ("name", "description", "schedule", "next_run_at", "last_run_at", "last_outcome", "enabled", "leader", "last_run_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    schedule: str
    next_run_at: _timestamp_pb2.Timestamp
    last_run_at: _timestamp_pb2.Timestamp
    last_outcome: JobRunOutcome
    enabled: bool
    leader: bool
    last_run_id: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., schedule: _Optional[str] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_outcome: _Optional[_Union[JobRunOutcome, str]] = ..., enabled: _Optional[bool] = ..., leader: _Optional[bool] = ..., last_run_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token", "replica_id", "leader_replica_id")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    replica_id: str
    leader_replica_id: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., replica_id: _Optional[str] = ..., leader_replica_id: _Optional[str] = ...) -> None: ...

class JobRun(_message.Message):
    __slots__ = ("run_id", "job_name", "started_at", "finished_at", "outcome", "trigger", "counts", "error_message", "replica_id", "actor", "trading_date")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_name: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    outcome: JobRunOutcome
    trigger: JobTrigger
    counts: _containers.ScalarMap[str, int]
    error_message: str
    replica_id: str
    actor: str
    trading_date: str
    def __init__(self, run_id: _Optional[str] = ..., job_name: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[JobRunOutcome, str]] = ..., trigger: _Optional[_Union[JobTrigger, str]] = ..., counts: _Optional[_Mapping[str, int]] = ..., error_message: _Optional[str] = ..., replica_id: _Optional[str] = ..., actor: _Optional[str] = ..., trading_date: _Optional[str] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RunJobResponse(_message.Message):
    __slots__ = ("run_id", "outcome", "run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    outcome: JobRunOutcome
    run: JobRun
    def __init__(self, run_id: _Optional[str] = ..., outcome: _Optional[_Union[JobRunOutcome, str]] = ..., run: _Optional[_Union[JobRun, _Mapping]] = ...) -> None: ...

class ListJobRunsRequest(_message.Message):
    __slots__ = ("job_name", "outcome", "page_size", "page_token", "trigger", "trading_date")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    outcome: JobRunOutcome
    page_size: int
    page_token: str
    trigger: JobTrigger
    trading_date: str
    def __init__(self, job_name: _Optional[str] = ..., outcome: _Optional[_Union[JobRunOutcome, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., trigger: _Optional[_Union[JobTrigger, str]] = ..., trading_date: _Optional[str] = ...) -> None: ...

class ListJobRunsResponse(_message.Message):
    __slots__ = ("job_runs", "next_page_token")
    JOB_RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_runs: _containers.RepeatedCompositeFieldContainer[JobRun]
    next_page_token: str
    def __init__(self, job_runs: _Optional[_Iterable[_Union[JobRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
