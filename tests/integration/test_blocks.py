"""Our blocks meet Prefect's block standards, register with the CLI, save/load without leaking secrets, and a
misspelled block name ends in one clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockTypeCreate
from prefect.settings import PREFECT_API_URL
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_aws import AwsCredentials, S3Bucket
from pydantic import SecretStr, ValidationError

import blocks
from blocks import MinivizCredentials
from blocks.base import BlockNotFoundError, load_block

BLOCKS = [getattr(blocks, name) for name in blocks.__all__]
TOKEN = "mvz-secret-777777"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block) -> None:
        # Prefect's version downloads the logo from the internet. Ours set none, on purpose: Prefect's client
        # accepts only an http(s) logo URL (test below), so a logo of our own cannot be shipped inside the
        # package, and a link to a vendor's site would break offline. The UI draws its default block icon.
        assert block._logo_url is None


def test_prefect_refuses_a_data_uri_as_block_logo():
    """Why the blocks carry no logo of their own: registering one as a data: URI fails in Prefect 3.8.8."""
    with pytest.raises(ValidationError, match="URL scheme should be 'http' or 'https'"):
        BlockTypeCreate(name="x", slug="x", logo_url="data:image/svg+xml;base64,PHN2Zy8+")


def miniviz(token: str = TOKEN) -> MinivizCredentials:
    return MinivizCredentials(project_id="p1", token=SecretStr(token), base_url="http://127.0.0.1:1")


def test_register_saves_and_loads_blocks(prefect_harness, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    for block in BLOCKS:
        assert block.get_block_type_name() in out.stdout

    miniviz().save("test-miniviz", overwrite=True)
    loaded = Block.load("miniviz-credentials/test-miniviz")
    assert isinstance(loaded, blocks.MinivizCredentials)
    assert loaded.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(loaded) and TOKEN not in str(loaded.model_dump())


async def test_registered_block_types_have_no_broken_logo(prefect_harness):
    """The server holds no logo URL for our types, so every UI page draws Prefect's default icon (a logo
    URL that does not load is what shows as a broken image)."""
    async with get_client() as client:
        for block in BLOCKS:
            await block.register_type_and_schema(client=client)
            registered = await client.read_block_type_by_slug(block.get_block_type_slug())
            assert registered.logo_url is None
            assert registered.documentation_url is not None


async def test_a_misspelled_block_name_lists_the_saved_names(prefect_harness):
    await miniviz().asave("greenhouse-a", overwrite=True)
    await miniviz().asave("greenhouse-b", overwrite=True)

    with pytest.raises(BlockNotFoundError) as caught:
        await MinivizCredentials.resolve("greenhouse-x")

    message = str(caught.value)
    assert message.startswith("no Miniviz Credentials block named 'greenhouse-x'; saved: ")
    saved = message.split("; saved: ")[1].split(", ")
    assert {"greenhouse-a", "greenhouse-b"} <= set(saved) and saved == sorted(saved)
    assert isinstance(caught.value, ValueError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # one error, not three
    assert TOKEN not in message


async def test_a_misspelled_s3_bucket_block_name_lists_the_saved_names(prefect_harness):
    credentials = AwsCredentials(aws_access_key_id="k", aws_secret_access_key=SecretStr("s3-secret-1"))
    await S3Bucket(bucket_name="b", credentials=credentials).asave("bucket-one", overwrite=True)

    with pytest.raises(
        BlockNotFoundError, match=r"^no S3 Bucket block named 'bucket-on'; saved: .*bucket-one"
    ):
        await load_block(S3Bucket, "bucket-on")
    assert (await load_block(S3Bucket, "bucket-one")).bucket_name == "b"


async def test_a_block_type_nothing_was_saved_of_says_none(prefect_harness):
    class NeverSaved(Block):
        _block_type_slug = "never-saved-in-tests"

    with pytest.raises(BlockNotFoundError, match=r"named 'x'; saved: none$"):
        await load_block(NeverSaved, "x")


async def test_a_flow_given_a_wrong_block_name_fails_with_that_one_line(prefect_harness):
    @flow
    async def uses_miniviz(block: str) -> str:
        return (await MinivizCredentials.resolve(block)).project_id

    state = await uses_miniviz("no-such-block", return_state=True)
    assert state.is_failed()
    assert "no Miniviz Credentials block named 'no-such-block'; saved: " in state.message
