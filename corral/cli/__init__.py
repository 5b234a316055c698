"""The ``corral`` command line.

Role commands come from the role packages and are mounted only when that role
is installed (``corral train`` from trainer, ``corral registry`` from registry,
``corral agent`` from agent), so a park computer with only the agent extra has a
working CLI. The client commands here (``devices``, ``device``, ``token``,
``api-token``, ``model``, ``alias``, ``rollout``, ``audit``) talk to the
registry's HTTP API and need nothing heavy.

One module per command group; this one assembles them::

    corral                      __init__ (root app, role mounting, main)
    ├── devices, audit          fleet
    ├── token, api-token        fleet
    ├── device                  fleet
    ├── model, alias            models
    ├── rollout                 rollouts
    │   └── shadow              shadow
    ├── alerts, actions         alerts
    └── train, predict, registry, keys, agent, fleet    (role packages, by main)

``corral --help`` lists commands, then groups, each in the order added here.
"""

from __future__ import annotations

import logging

import typer

from corral.cli.alerts import actions_app, alerts_app
from corral.cli.fleet import api_token_app, audit, device_app, device_table, devices, token_app
from corral.cli.models import alias_app, model_app
from corral.cli.rollouts import rollout_app
from corral.cli.shadow import shadow_app

# registry_client (in _common) looks the client class up here, so a test can hand every
# command a fake registry with monkeypatch.setattr("corral.cli.RegistryClient", ...).
from corral.client import RegistryClient  # noqa: F401 - the seam above, not our surface

__all__ = ["app", "device_table", "main"]

app = typer.Typer(no_args_is_help=True, help="Train, sign, roll out and watch image models.")
app.command()(devices)
app.command()(audit)
app.add_typer(model_app, name="model")
app.add_typer(rollout_app, name="rollout")
rollout_app.add_typer(shadow_app, name="shadow")
app.add_typer(token_app, name="token")
app.add_typer(api_token_app, name="api-token")
app.add_typer(alias_app, name="alias")
app.add_typer(device_app, name="device")
app.add_typer(alerts_app, name="alerts")
app.add_typer(actions_app, name="actions")


def _mount_roles() -> None:
    try:
        from trainer.cli import train
    except ImportError:
        pass
    else:
        app.command("train", help="Train, evaluate and export a model bundle.")(train)
    try:
        from registry.cli import app as registry_app
        from registry.cli import keys_app
    except ImportError:
        pass
    else:
        app.add_typer(registry_app, name="registry", help="Run the registry.")
        app.add_typer(keys_app, name="keys", help="Offline TUF root keys: make, sign, rotate.")
    try:
        from agent.cli import app as agent_app
        from agent.cli import predict
    except ImportError:
        pass
    else:
        app.add_typer(agent_app, name="agent", help="Enrol and run the agent on a park computer.")
        app.command(
            "predict",
            help="Predict images offline with a bundle, as the agent would; score labels.",
        )(predict)
    try:
        from agent.simulate_cli import app as fleet_app
    except ImportError:
        pass
    else:
        app.add_typer(fleet_app, name="fleet", help="Simulate a fleet of agents.")


def main() -> None:
    """Entry point of the ``corral`` console script."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _mount_roles()
    app()
