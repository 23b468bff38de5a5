"""Devices and the cluster: validate exported candidates on a phone (adb) or an emulated phone; join or
start Ray clusters (and run private multi-node ones on one machine for tests)."""
from ._devices import (BACKENDS, PHONE_RESOURCE, DeviceBackend, ValidationResult, get_backend, task_options,
                       validate_on_cluster)
from ._adb import AdbBackend, AdbConfig
from ._emulated import EmulatedBackend, host_bandwidth
from ._nodes import LocalNodes, Node
from ._ray import alive_nodes, check_address, driver_node_ip, free_port, start_ray
from ._validate import validate_experiment

__all__ = ["BACKENDS", "PHONE_RESOURCE", "DeviceBackend", "ValidationResult", "get_backend", "task_options",
           "validate_on_cluster", "AdbBackend", "AdbConfig", "EmulatedBackend", "host_bandwidth",
           "LocalNodes", "Node", "alive_nodes", "check_address", "driver_node_ip", "free_port", "start_ray",
           "validate_experiment"]
