"""Device accounts on the broker, made by the control plane itself through mosquitto's
dynamic security plugin (``deploy/mosquitto/listeners-dynsec.conf``).

The control plane logs in as ``edgefleet-control-plane``, the plugin's admin account made by
``mosquitto_ctrl dynsec init``, and sends the plugin's JSON commands to
``$CONTROL/dynamic-security/v1`` over the bridge's own connection; answers come back on
``…/response``, matched by ``correlationData``. At every connect it gives its own account
the role it needs (the whole topic root) and makes the plugin deny whatever no role allows.

Each device gets an account named by its id, pinned to the client id = its id, with a role
of its own that allows exactly its topics: publish ``state``, ``online``, ``telemetry`` and
``samples``, subscribe to and receive ``desired`` and ``ack``. The plugin of mosquitto 2.0
has no ``%u`` patterns, hence a role per device. Its password is the device token: the
control plane never stores it (only its hash), so an account is made at the moment the
token is in hand, when an operator adds the device or when the device checks in with it.

The command builders are pure; ``Dynsec`` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from control_plane.errors import UnavailableError
from control_plane.observability.logs import about
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)

COMMAND_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = COMMAND_TOPIC + "/response"
DEVICE_ROLE_PREFIX = "edgefleet-device-"
SENDS = (Channel.STATE, Channel.ONLINE, Channel.TELEMETRY, Channel.SAMPLES)
RECEIVES = (Channel.DESIRED, Channel.ACK)
BATCH = 25  # devices per command message: the plugin saves its whole file after each command

Command = dict[str, Any]


def _acl(acltype: str, topic: str) -> Command:
    return {"acltype": acltype, "topic": topic, "allow": True}


def control_plane_acls(topics: Topics) -> list[Command]:
    """The whole topic root, shared subscriptions included (the plugin checks the
    ``$share/GROUP/`` filter as it is written)."""
    tree = f"{topics.root}/#"
    return [
        _acl("publishClientSend", tree),
        _acl("publishClientReceive", tree),
        _acl("subscribePattern", tree),
        _acl("subscribePattern", f"$share/+/{tree}"),
        _acl("unsubscribePattern", tree),
        _acl("unsubscribePattern", f"$share/+/{tree}"),
    ]


def device_role(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + device_id


def device_acls(topics: Topics, device_id: str) -> list[Command]:
    acls = [_acl("publishClientSend", topics.device(device_id, c)) for c in SENDS]
    for channel in RECEIVES:
        topic = topics.device(device_id, channel)
        acls += [
            _acl("subscribeLiteral", topic),
            _acl("publishClientReceive", topic),
            _acl("unsubscribeLiteral", topic),
        ]
    return acls


# The plugin denies what no role allows; receiving is allowed by default, so say it.
DEFAULT_ACCESS: Command = {
    "command": "setDefaultACLAccess",
    "acls": [
        {"acltype": "publishClientSend", "allow": False},
        {"acltype": "publishClientReceive", "allow": False},
        {"acltype": "subscribe", "allow": False},
        {"acltype": "unsubscribe", "allow": True},
    ],
}


def _error(response: Command) -> str | None:
    error = response.get("error")
    return str(error) if error else None


class Dynsec:
    """Commands to the plugin over a connection someone else keeps (the bridge's): it calls
    ``accept`` with every message on ``RESPONSE_TOPIC`` and gives ``publish``."""

    def __init__(
        self,
        topics: Topics,
        username: str,
        publish: Callable[..., Awaitable[bool]],  # (topic, payload, qos=…)
        connected: asyncio.Event,
        timeout: float = 10.0,
    ) -> None:
        self.topics = topics
        self.username = username
        self._publish = publish
        self._connected = connected
        self._timeout = timeout
        self._waiting: dict[str, asyncio.Future[Command]] = {}

    def accept(self, payload: bytes) -> None:
        """A response document: resolve the commands it answers. Others' answers (another
        control-plane process shares the topic) and garbage are ignored."""
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        for response in responses if isinstance(responses, list) else ():
            key = response.get("correlationData") if isinstance(response, dict) else None
            future = self._waiting.pop(key, None) if isinstance(key, str) else None
            if future is not None and not future.done():
                future.set_result(response)

    async def run(self, commands: list[Command]) -> list[Command]:
        """Send ``commands`` in one message; their responses, in order. ``UnavailableError``
        when the broker is not connected or does not answer in time (is the plugin loaded,
        and is this account its admin?)."""
        loop = asyncio.get_running_loop()
        keyed = []
        futures = []
        for command in commands:
            key = secrets.token_hex(8)
            self._waiting[key] = future = loop.create_future()
            keyed.append({**command, "correlationData": key})
            futures.append(future)
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
                if not await self._publish(COMMAND_TOPIC, json.dumps({"commands": keyed})):
                    raise UnavailableError("the broker did not take the account command")
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            raise UnavailableError(
                f"the broker did not answer its dynamic-security commands within "
                f"{self._timeout:g} s: is mosquitto_dynamic_security loaded, and is "
                f"{self.username} its admin (mosquitto_ctrl dynsec init)? A broker whose "
                'accounts are kept by hand needs broker_accounts = "manual"',
                code="broker_unavailable",
            ) from exc
        finally:
            for command in keyed:
                self._waiting.pop(command["correlationData"], None)

    async def _checked(self, commands: list[Command], tolerated: tuple[str, ...] = ()) -> None:
        for command, response in zip(commands, await self.run(commands), strict=True):
            error = _error(response)
            if error and not any(text in error for text in tolerated):
                raise UnavailableError(
                    f"the broker refused {command['command']}: {error[:200]}",
                    code="broker_refused",
                )

    async def set_up_control_plane(self) -> bool:
        """Give this account its role over the topic root and deny what no role allows.
        Idempotent: run at every connect (a role made before is kept). False when the role
        was just given: mosquitto then ends this account's connections (the command's
        answer with them), so the caller reconnects and finds it."""
        role = self.username
        commands = [{"command": "createRole", "rolename": role}] + [
            {"command": "addRoleACL", "rolename": role, **acl}
            for acl in control_plane_acls(self.topics)
        ]
        await self._checked(commands, tolerated=("already exists",))
        await self._checked([DEFAULT_ACCESS])
        (client,) = await self.run([{"command": "getClient", "username": role}])
        roles = client.get("data", {}).get("client", {}).get("roles", [])
        if any(r.get("rolename") == role for r in roles):
            return True
        add = {"command": "addClientRole", "username": role, "rolename": role}
        # QoS 0: the broker ends the connection before any PUBACK (a lost one is sent again
        # at the next connect, which finds no role either).
        await self._publish(COMMAND_TOPIC, json.dumps({"commands": [add]}), qos=0)
        return False

    async def put_device(self, device_id: str, password: str) -> None:
        """Make the device's account, or give an existing one this password (which ends its
        live connections: a reissued token takes over at once)."""
        await self.put_devices([(device_id, password)])

    async def put_devices(self, accounts: Sequence[tuple[str, str]]) -> None:
        """``put_device`` for many (device id, password) pairs, ``BATCH`` to a message."""
        for start in range(0, len(accounts), BATCH):
            chunk = accounts[start : start + BATCH]
            roles = [
                {
                    "command": "createRole",
                    "rolename": device_role(device_id),
                    "acls": device_acls(self.topics, device_id),
                }
                for device_id, _ in chunk
            ]
            await self._checked(roles, tolerated=("already exists",))
            creates = [
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "clientid": device_id,
                    "roles": [{"rolename": device_role(device_id)}],
                }
                for device_id, password in chunk
            ]
            passwords = []
            for (device_id, password), created in zip(chunk, await self.run(creates), strict=True):
                error = _error(created) or ""
                if error.startswith("Client already exists"):
                    passwords.append(
                        {
                            "command": "setClientPassword",
                            "username": device_id,
                            "password": password,
                        }
                    )
                elif error:
                    raise UnavailableError(f"the broker refused createClient: {error[:200]}")
            if passwords:
                await self._checked(passwords)
            for device_id, _ in chunk:
                log.info("broker account of %s made", device_id, extra=about(device_id=device_id))

    async def delete_device(self, device_id: str) -> None:
        """Delete the device's account (ending its live connections) and its role."""
        commands = [
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": device_role(device_id)},
        ]
        await self._checked(commands, tolerated=("not found",))
        log.info("broker account of %s deleted", device_id, extra=about(device_id=device_id))
