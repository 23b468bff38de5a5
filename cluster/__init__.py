"""Devices and the cluster: validate exported candidates on a phone (adb) or an emulated phone."""
from ._devices import (BACKENDS, PHONE_RESOURCE, DeviceBackend, ValidationResult, get_backend, task_options,
                       validate_on_cluster)
from ._adb import AdbBackend, AdbConfig
from ._emulated import EmulatedBackend, host_bandwidth
from ._validate import validate_experiment

__all__ = ["BACKENDS", "PHONE_RESOURCE", "DeviceBackend", "ValidationResult", "get_backend", "task_options",
           "validate_on_cluster", "AdbBackend", "AdbConfig", "EmulatedBackend", "host_bandwidth",
           "validate_experiment"]
