"""Checks of the azd deployment that need no Azure: azure.yaml against azd's schema, every .bicep
file through the tree-sitter Bicep grammar (syntax, API versions, storage hardening, no keys, wiring
of parameters, outputs and app settings), the Azure ML YAML through the azure-ai-ml loaders, and the
post-deploy hook's requests built with the real SDK models and serializers."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest
import yaml

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
    hook_config = document["hooks"]["postdeploy"]
    assert (ROOT / hook_config["run"]).exists() and (ROOT / hook_config["dir"] / "requirements.txt").exists()
    function_app = next(r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Web/sites@"))
    assert "'azd-service-name': 'functions'" in _expr(function_app["body"]["tags"]), "azd finds the app by this tag"


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


def test_storage_accounts_accept_identities_only():
    accounts = [r for f in outlines().values() for r in f["resources"]
                if r["type"].startswith("Microsoft.Storage/storageAccounts@") and not r["existing"]]
    assert len(accounts) == 1, "one module makes every account"
    properties = accounts[0]["body"]["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["minimumTlsVersion"] == "TLS1_2"
    uses = [m for m in _main()["modules"] if m["path"] == "modules/storage-account.bicep"]
    assert len(uses) == 2, "a data account and an operations account"
    containers = [r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.Storage/storageAccounts/blobServices/containers@") and not r["existing"]]
    assert all(c["body"]["properties"]["publicAccess"] == "None" for c in containers)


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


def test_gpu_cluster_scales_from_zero_with_parameters():
    cluster = next(r for f in outlines().values() for r in f["resources"] if r["type"].startswith("Microsoft.MachineLearningServices/workspaces/computes@"))
    spec = cluster["body"]["properties"]["properties"]
    assert spec["scaleSettings"]["minNodeCount"] == 0
    assert _expr(spec["scaleSettings"]["maxNodeCount"]) == "maxNodes"
    assert "idleSecondsBeforeScaleDown" in _expr(spec["scaleSettings"]["nodeIdleTimeBeforeScaleDown"])
    assert "LowPriority" in _expr(spec["vmPriority"]) and _expr(spec["vmSize"]) == "vmSize"
    compute = next(m for m in _main()["modules"] if m["path"] == "modules/ml-compute.bicep")["body"]["params"]
    for parameter in ("gpuVmSize", "gpuMaxNodes", "gpuLowPriority", "gpuIdleSecondsBeforeScaleDown"):
        assert parameter in _main()["params"] and parameter in {_expr(v) for v in compute.values()}


def test_event_grid_topic_on_the_data_account():
    topics = [r for r in outlines()["bicep/modules/event-grid.bicep"]["resources"] if r["type"].startswith("Microsoft.EventGrid/systemTopics@")]
    assert {t["body"]["properties"]["topicType"] for t in topics} == {"Microsoft.Storage.StorageAccounts", "Microsoft.MachineLearningServices.Workspaces"}
    events = next(m for m in _main()["modules"] if m["path"] == "modules/event-grid.bicep")["body"]["params"]
    assert _expr(events["dataAccountId"]) == "dataStorage.outputs.id"


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
    functions_module = outlines()["bicep/modules/function-app.bicep"]
    base_settings = next(r for r in functions_module["resources"] if r["type"].startswith("Microsoft.Web/sites@"))
    source = (ROOT / "bicep" / "modules" / "function-app.bicep").read_text()
    for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__clientId", "DataStorage__blobServiceUri",
                 "DataStorage__queueServiceUri", "DataStorage__clientId", "AZURE_CLIENT_ID",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"):
        assert re.search(rf"^\s+{name}:", source, re.M), name
    assert "FUNCTIONS_WORKER_RUNTIME" not in source, "Flex Consumption takes the runtime from functionAppConfig"
    entry = re.search(r"PYTHON_SCRIPT_FILE_NAME: '([^']+)'", source).group(1)
    assert (ROOT / entry).exists() and entry != "function_app.py"
    assert base_settings["body"]["properties"]["siteConfig"]["appSettings"]
    stylize = next(m for m in _main()["modules"] if m["path"] == "modules/function-app.bicep")["body"]["params"]["stylizeSettings"]
    known = {f"STYLIZE_{field.name.upper()}" for field in fields(Settings)} | {"STYLIZE_TASK_HUB"}
    assert set(stylize) <= known, set(stylize) - known
    assert "%STYLIZE_TASK_HUB%" in (ROOT / "host.json").read_text()
    main_source = (ROOT / "bicep" / "main.bicep").read_text()
    defaults = Settings()
    assert f"componentName = '{defaults.azureml_component}'" in main_source
    assert f"datastoreName = '{defaults.azureml_datastore}'" in main_source
    assert f"computeName = '{defaults.azureml_compute}'" in main_source
    for container in (defaults.input_container, defaults.output_container, defaults.work_container):
        assert f"'{container}'" in main_source


def test_role_assignments_are_scoped_and_keyless():
    rbac = outlines()["bicep/modules/rbac.bicep"]
    assignments = [r for r in rbac["resources"] if r["type"].startswith("Microsoft.Authorization/roleAssignments@")]
    assert assignments and all("scope" in a["body"] for a in assignments)
    source = (ROOT / "bicep" / "modules" / "rbac.bicep").read_text()
    for broad in ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "b24988ac-6180-42a0-ab88-20f7382dd24c", "17d1049b-9a84-46fb-8f53-869881c3d3ab"):
        assert broad not in source, "no Owner, Contributor or Storage Account Contributor"
    role = next(r for r in rbac["resources"] if r["type"].startswith("Microsoft.Authorization/roleDefinitions@"))
    actions = role["body"]["properties"]["permissions"][0]["actions"]
    assert "Microsoft.MachineLearningServices/workspaces/jobs/write" in actions
    assert not [a for a in actions if a.endswith("*") or "computes/write" in a or "listsecrets" in a.lower()]


# Azure ML assets

def test_environment_and_component_load_offline():
    from azure.ai.ml import load_component, load_environment

    environment = load_environment(AML_DIR / "environment.yml")
    assert environment.image and environment.name == "stylize-gpu"
    pins = environment.conda_file["dependencies"][-1]["pip"]
    for package in ("torch", "torchvision", "av", "numpy"):
        assert any(re.fullmatch(rf"{package}==[\w.+]+", pin) for pin in pins), package
    component = load_component(AML_DIR / "component.yml")
    assert component.name == Settings().azureml_component and component.type == "command"
    assert set(component.outputs) == {"styled"} and component.inputs["end_pts"].optional


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
    assert len(client.environments.versions) == len(client.components.versions) == 1
    component = next(iter(client.components.versions.values()))
    environment = next(iter(client.environments.versions.values()))
    assert component.environment == f"azureml:stylize-gpu:{environment.version}"
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
    "WORK_CONTAINER": "stylize-work",
    "DATA_EVENTS_TOPIC": "evgt-data-abc",
    "WORKSPACE_EVENTS_TOPIC": "evgt-ml-abc",
    "AZUREML_WORKSPACE": "mlw-abc",
}


def test_hook_refuses_an_unprovisioned_environment(capsys):
    assert hook.main({"AZURE_SUBSCRIPTION_ID": "x"}) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "FUNCTION_APP_NAME" in error and "azd provision" in error


def test_event_subscriptions_target_the_deployed_functions(app_functions):
    from azure.mgmt.eventgrid import EventGridManagementClient

    from function_app.batches import AML_FAILED_STATES

    deployment = hook.Deployment.from_env(ENV)
    subscriptions = hook.event_subscriptions(deployment, "KEY")
    serializer = EventGridManagementClient(credential=object(), subscription_id=ENV["AZURE_SUBSCRIPTION_ID"])._serialize
    bodies = {name: serializer.body(sub, "EventSubscription")["properties"] for (_, name), sub in subscriptions.items()}
    assert {hook.UPLOAD_FUNCTION, hook.STYLED_FUNCTION, hook.RUN_STATUS_FUNCTION} <= set(app_functions)
    uploads = bodies["stylize-uploads"]
    assert uploads["destination"]["endpointType"] == "WebHook"
    assert uploads["destination"]["properties"]["endpointUrl"] == \
        "https://func-abc.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.on_upload&code=KEY"
    assert uploads["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert uploads["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/videos-in/blobs/"
    styled = bodies["stylize-styled-segments"]
    assert styled["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/stylize-work/blobs/jobs/"
    assert styled["filter"]["advancedFilters"] == [{"operatorType": "StringContains", "key": "subject", "values": ["/styled/"]}]
    runs = bodies["stylize-failed-runs"]
    assert runs["destination"]["endpointType"] == "AzureFunction"
    assert runs["destination"]["properties"]["resourceId"].endswith("/providers/Microsoft.Web/sites/func-abc/functions/on_azureml_run_status")
    assert set(runs["filter"]["advancedFilters"][0]["values"]) == AML_FAILED_STATES
    topics = {topic for topic, _ in subscriptions}
    assert topics == {ENV["DATA_EVENTS_TOPIC"], ENV["WORKSPACE_EVENTS_TOPIC"]}


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
    """The deployment package azd builds (the project minus .funcignore) indexes every function, with no torch."""
    import pathspec

    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".funcignore").read_text().splitlines())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    package = tmp_path / "package"
    for name in tracked:
        if not ignore.match_file(name):
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, package / name)
    top = {path.name for path in package.iterdir()}
    assert {"host.json", "requirements.txt", "stylize_functions.py", "function_app", "shared", "gpu_job"} <= top
    assert not top & {"tests", "bench", "bicep", "deploy", ".venv", "node_modules"}
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import stylize_functions, function_app, shared, gpu_job\n"
            "assert all(m.__file__.startswith(sys.argv[1]) for m in (stylize_functions, function_app, shared, gpu_job))\n"
            "print(len(stylize_functions.app.get_functions()))")
    run = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, cwd=package, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.strip()) == 10
