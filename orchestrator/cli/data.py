"""`orchestrator data ...`: make training data for the engine.

    $ orchestrator data prepare corpus.txt -o data/corpus.npy
    $ torchrun --nproc-per-node 2 -m orchestrator.engine --data data/corpus.npy ...
"""

from __future__ import annotations

import json

import click


@click.group("data")
def data_group() -> None:
    """Prepare token files for `--data`."""


@data_group.command("prepare")
@click.argument("text_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, metavar="OUT", help="The .npy token file to write (+ OUT.json).")
@click.option("--dtype", type=click.Choice(["uint16", "uint32"]), default="uint16", show_default=True,
              help="Token width on disk.")
@click.option("--json", "as_json", is_flag=True, help="Print the file's metadata as JSON on stdout.")
def prepare_command(text_file: str, output: str, dtype: str, as_json: bool) -> None:
    """Tokenize TEXT_FILE byte by byte (vocab 256, nothing downloaded) into a memory-mappable token file."""
    from orchestrator.engine.data import write_token_file

    meta = write_token_file(text_file, output, dtype=dtype)
    if as_json:
        click.echo(json.dumps({"path": output, **meta}))
    else:
        click.echo(f"wrote {output}: {meta['num_tokens']} tokens ({dtype}, byte tokenizer, vocab "
                   f"{meta['vocab_size']})", err=True)


commands = [data_group]
