"""deploy/: the Ray cluster-launcher YAML and the KubeRay RayJob parse and use only fields the installed Ray
version documents:
- cluster.yaml against ray/autoscaler/ray-schema.json (what `ray up` validates), raw and with Ray's defaults
  filled in (`prepare_config` + `validate_config`, exactly as `ray up` does before it starts anything);
- rayjob.yaml's cluster spec through the installed Ray's own KubeRay reader (the autoscaling config KubeRay's
  autoscaler derives from a RayCluster spec, validated against the same schema), and its RayJob fields against
  the field names of the KubeRay v1 RayJob CRD (ray-project/kuberay v1.7.0,
  ray-operator/config/crd/bases/ray.io_rayjobs.yaml; the CRD itself does not ship with Ray).
"""
import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# KubeRay v1.7.0 RayJob CRD, version v1: the properties of spec, spec.rayClusterSpec, its head and worker groups
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
               "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
RAY_CLUSTER_SPEC = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                    "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy",
                    "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
              "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
                "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}


def _schema():
    import ray.autoscaler
    return json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())


def test_cluster_launcher_yaml_follows_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    jsonschema.validate(config, _schema())
    validate_config(prepare_config(copy.deepcopy(config)))
    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and config["head_node_type"] in config["available_node_types"]
    commands = " ".join(config["setup_commands"])
    assert "/mnt/shared" in commands and "pip install -q -e ." in commands     # shared storage, the project
    typo = copy.deepcopy(config)
    typo["available_node_types"]["gpu_worker"]["min_wokers"] = 1                 # the lint catches a typo
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        jsonschema.validate(typo, _schema())


def test_rayjob_uses_documented_fields_and_a_gpu_worker_group():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import validate_config
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert set(spec) <= RAYJOB_SPEC and set(cluster) <= RAY_CLUSTER_SPEC
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert all(set(group) <= WORKER_GROUP for group in cluster["workerGroupSpecs"])
    yaml.safe_load(spec["runtimeEnvYAML"])
    derived = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": job["metadata"]["name"],
                                                                   "namespace": "default"}, "spec": cluster})
    validate_config(derived)
    assert derived["available_node_types"]["gpu"]["resources"]["GPU"] >= 1
    assert "search launch" in spec["entrypoint"] and "--storage" in spec["entrypoint"]
