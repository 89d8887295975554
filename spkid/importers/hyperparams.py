"""A SpeechBrain ``hyperparams.yaml`` read as data: its tags become ``Tagged`` values, never calls.

HyperPyYAML builds objects while it parses (``!new:``, ``!name:``, ``!apply:``), and a model folder's YAML may reach
for the hub. Here ``yaml.SafeLoader`` reads the document; every ``!...`` tag is kept as ``Tagged(tag, value)``;
``!ref <key>`` is resolved against the document's own keys (plain references and text around them, as in
``<pretrained_path>/embedding_model.ckpt``). A tag that would run code at load time (``!apply:``, ``!include:``) or
build a class spkid does not know (``!new:``/``!name:`` outside ``KNOWN``) is a one-line error naming it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from spkid.errors import CheckpointError

KNOWN = {                          # classes a speaker-embedding folder names; read for their arguments only
    "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN", "speechbrain.lobes.models.ECAPA_TDNN.Classifier",
    "speechbrain.lobes.features.Fbank", "speechbrain.processing.features.InputNormalization",
    "speechbrain.dataio.encoder.CategoricalEncoder", "speechbrain.utils.parameter_transfer.Pretrainer",
}
DATA_TAGS = ("!ref", "!copy", "!tuple", "!PLACEHOLDER")


@dataclass
class Tagged:
    tag: str                       # "!new:speechbrain.lobes.features.Fbank"
    value: object                  # its mapping, sequence or scalar

    @property
    def target(self) -> str:
        return self.tag.split(":", 1)[1] if ":" in self.tag else ""


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader, suffix, node):
    tag = "!" + suffix
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(tag, value)


_Loader.add_multi_constructor("!", _tagged)


def read_hyperparams(path: Path) -> dict:
    """The document with tags as ``Tagged`` and ``!ref`` resolved; one-line errors naming ``path``."""
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: not valid YAML ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a mapping of hyperparameters at the top level")
    _check_tags(doc, path, "")
    return _resolve(doc, doc, path, 0)


def _check_tags(value, path: Path, where: str) -> None:
    if isinstance(value, Tagged):
        head = value.tag.split(":", 1)[0]
        if head in ("!apply", "!include") or (head not in ("!new", "!name") and value.tag not in DATA_TAGS):
            raise CheckpointError(f"{path}: {where or 'top level'}: {value.tag} asks to run code at load time; spkid "
                                  "reads hyperparameters as data only")
        if head in ("!new", "!name") and value.target not in KNOWN:
            raise CheckpointError(f"{path}: {where}: {value.tag} builds {value.target}, which spkid does not map "
                                  f"(it reads {', '.join(sorted(c.rsplit('.', 1)[1] for c in KNOWN))})")
        _check_tags(value.value, path, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tags(v, path, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_tags(v, path, f"{where}[{i}]")


_REF = re.compile(r"<([^<>]+)>")


def _lookup(doc: dict, key: str, path: Path):
    node = doc
    for part in re.split(r"[.\[\]]+", key.strip()):
        if not part:
            continue
        if isinstance(node, Tagged):
            node = node.value
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise CheckpointError(f"{path}: !ref <{key}> names no key of the file")
    return node


def _resolve(value, doc: dict, path: Path, depth: int):
    if depth > 20:
        raise CheckpointError(f"{path}: !ref chain too deep (a reference loop?)")
    if isinstance(value, Tagged) and value.tag in ("!ref", "!copy"):
        text = str(value.value).strip()
        whole = _REF.fullmatch(text)
        if whole:
            return _resolve(_lookup(doc, whole.group(1), path), doc, path, depth + 1)
        return _REF.sub(lambda m: str(_resolve(_lookup(doc, m.group(1), path), doc, path, depth + 1)), text)
    if isinstance(value, Tagged):
        return Tagged(value.tag, _resolve(value.value, doc, path, depth))
    if isinstance(value, dict):
        return {k: _resolve(v, doc, path, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, doc, path, depth) for v in value]
    return value


def find_built(doc: dict, target: str) -> list[tuple[str, dict]]:
    """``(key, arguments)`` of every ``!new:<target>`` in the document (top-level keys first)."""
    out = []

    def walk(value, where):
        if isinstance(value, Tagged):
            if value.tag == f"!new:{target}":
                out.append((where, value.value if isinstance(value.value, dict) else {}))
            walk(value.value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
    walk(doc, "")
    return out
