"""Condition types and reasons, shared by the operator and the local runner."""

# Types
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
WAITING = "Waiting"

# Reasons
STARTED = "Started"
COMPLETED = "Completed"
UNCHANGED = "Unchanged"
INVALID_SPEC = "InvalidSpec"
JOB_FAILED = "JobFailed"
INTERRUPTED = "Interrupted"
DEPENDENCY_NOT_READY = "DependencyNotReady"
DEPENDENCY_FAILED = "DependencyFailed"
GATE_FAILED = "ThresholdsNotMet"
