"""Check a recipe configuration against the constructors it feeds, before anything trains.

Every section of a recipe's configuration (UnFuSeD, SimCLRv2) is checked by jsonargparse against the
signature of the class it is passed to, as ``LightningCLI`` checks its own configs: unknown keys name the
closest valid one, wrong types name the expected type, missing required arguments are named. The recipe's
own keys (label budgets, seeds, fine-tune methods) and the top-level shape of the file are checked here.
:func:`check_config` needs no data and runs in well under a second; the recipe then builds every module
and trainer once and pushes one batch of the real data through each encoder (see ``unfused.preflight``),
so a typo in the last stage fails in seconds, not after an hour of pretraining.
"""

from __future__ import annotations

import functools
import inspect
import re
from argparse import ArgumentError
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from fewlabel.callbacks import PseudoLabeler
from fewlabel.plugins.arguments import check_int, is_count
from fewlabel.plugins.augment.factory import AUGMENTS
from fewlabel.plugins.encoders.registry import encoder_constructor
from fewlabel.callbacks import EMATeacher
from fewlabel.plugins.methods import METHODS, Classifier, KnowledgeDistillation, SelfDistillation
from fewlabel.plugins.registry import Registry, closest


class RecipeError(ValueError):
    """A problem with a recipe's configuration, data or run folder; the CLI prints it in one line.

    Example:
        >>> from fewlabel.plugins.recipes import load_config
        >>> from fewlabel.plugins.recipes.build import DATAMODULES
        >>> try:
        ...     check_config(load_config("unfused", overrides=["finetune.trainer.max_epoch=3"]), DATAMODULES)
        ... except RecipeError as err:
        ...     print(err)
        unknown key finetune.trainer.max_epoch (did you mean 'max_epochs'?)
    """


#: Trainer keys the recipe owns: it passes its own logger, callbacks and checkpointing to every stage.
RECIPE_TRAINER_KEYS = {
    "logger": "choose it with --logger",
    "callbacks": "stages add their own callbacks",
    "enable_checkpointing": "stages checkpoint every epoch so that they can resume",
}
#: Trainer keys that change what is printed or logged, not what is computed (not part of a stage's settings).
COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
TOP_LEVEL = ("seed", "num_threads", "pictures", "data", "trainer", "teacher", "pseudo_labels", "student", "finetune")
#: SimCLRv2's top level: its ``student`` section names the student's encoder only; ``distill`` trains it.
SIMCLRV2_TOP_LEVEL = ("seed", "num_threads", "pictures", "data", "trainer", "teacher", "student", "finetune",
                      "distill")
STAGE_SECTIONS = ("encoder", "augment", "module", "trainer")
TEACHER_SECTIONS = ("method", "ema", *STAGE_SECTIONS)
DEFAULT_TEACHER = "deepcluster_v2"
FINETUNE_KEYS = ("labels_per_class", "seeds", "draws_together", "lr_candidates", "augment", "module", "trainer",
                 "methods")
METHOD_KEYS = ("encoder_from", "augment", "module", "trainer")
ENCODER_SOURCES = ("teacher", "student", "scratch")
#: Per recipe: its top-level keys, its stages after the teacher (section, the class its ``module`` feeds
#: or None, its keys) and the encoders its fine-tune methods may start from.
RECIPE_SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, Any, tuple[str, ...]], ...], tuple[str, ...]]] = {
    "unfused": (TOP_LEVEL, (("student", SelfDistillation, STAGE_SECTIONS),), ENCODER_SOURCES),
    "simclrv2": (SIMCLRV2_TOP_LEVEL, (("student", None, ("encoder",)),
                                      ("distill", KnowledgeDistillation, ("augment", "module", "trainer"))),
                 ("teacher", "scratch")),
}
# Arguments the recipe fills in itself, so a config may not set them.
_SET_BY_RECIPE = {
    "teacher": ("encoder", "num_samples", "augment"),
    "student": ("encoder", "num_classes", "num_samples", "augment"),
    "pseudo_labels": ("teacher", "dataloader", "val_dataloader"),
    "finetune": ("encoder", "num_classes", "augment"),
    "distill": ("teacher", "teacher_checkpoint", "encoder", "num_classes", "augment"),
}


def accepts_any_key(target: Callable[..., Any]) -> bool:
    """Whether ``target`` hands ``**kwargs`` beyond fewlabel (a timm model, ``nn.Module``), so any key may be valid.

    A fewlabel class whose ``__init__`` passes ``**kwargs`` on to its base is followed into that base, as
    jsonargparse does.
    """
    functions = [klass.__dict__["__init__"] for klass in target.__mro__ if "__init__" in klass.__dict__] \
        if inspect.isclass(target) else [target]
    for depth, function in enumerate(functions):
        if depth and not function.__module__.startswith("fewlabel."):
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values()):
            return False
    return True


@functools.lru_cache(maxsize=None)
def argument_parser(target: Callable[..., Any], skip: frozenset[str] = frozenset()) -> ArgumentParser:
    """jsonargparse's parser of ``target``'s keyword arguments (a class or a function), less ``skip``."""
    parser = ArgumentParser(exit_on_error=False)
    add = parser.add_class_arguments if inspect.isclass(target) else parser.add_function_arguments
    add(target, skip=set(skip), fail_untyped=False)
    return parser


def accepted_keys(target: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """The argument names jsonargparse reads from ``target``'s signature (``**kwargs`` followed into fewlabel bases)."""
    return list(argument_parser(target, frozenset(skip)).get_defaults().keys())


def _expected(message: str) -> str:
    """The type jsonargparse expected, from its error message, in the words a YAML user reads."""
    found = re.search(r"Subtypes: \[(.*)\]\n", message) or re.search(r"Expected a (.*?)(?:\. Got value|\n|$)", message)
    if found is None:
        return message.replace("\n", " ")
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", found.group(1))
    text = text.replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):  # the top-level commas separate a union's members
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return " | ".join([*parts, text[start:].strip()])


def check_mapping(where: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict (``None`` = empty), or a RecipeError naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {type(value).__name__} {value!r}")
    return value


def check_keys(where: str, mapping: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Refuse keys outside ``valid``, naming the closest valid one."""
    valid = list(valid)
    listing = f"; valid keys: {', '.join(sorted(valid))}" if len(valid) <= 16 else ""
    for key in mapping:
        if key not in valid:
            raise RecipeError(f"unknown key {where}.{key}{closest(str(key), valid)}{listing}")


def check_arguments(where: str, mapping: Any, target: Callable[..., Any], *,
                    skip: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``mapping``'s keys and values against ``target``'s signature with jsonargparse (as LightningCLI does).

    Unknown keys name the closest valid one; a value of the wrong type names the type expected. A string that
    jsonargparse reads as the expected number or bool (``"1e-3"``, which YAML leaves a string) is replaced in
    ``mapping`` by that value, so the constructor receives what was checked.

    Returns:
        ``mapping`` (``{}`` for ``None``).
    """
    mapping = check_mapping(where, mapping)
    skip = frozenset(skip)
    for key in mapping:
        if key in skip:
            raise RecipeError(f"{where}.{key} is set by the recipe itself; remove it from the config")
    valid = accepted_keys(target, skip)
    if not accepts_any_key(target):
        check_keys(where, mapping, valid)
    known = {key: value for key, value in mapping.items() if key in valid}
    try:
        parsed = argument_parser(target, skip).parse_object(known, defaults=False)
    except ArgumentError as err:
        message = str(err)
        missing = re.search(r"the following arguments are required: (.*)", message)
        if missing:
            raise RecipeError(f"{where} needs {missing.group(1)}") from None
        key = re.search(r'Parser key "([^"]+)"', message)
        if key is None or key.group(1) not in known:
            raise RecipeError(f"{where}: {message}") from None
        value = known[key.group(1)]
        raise RecipeError(f"{where}.{key.group(1)} must be {_expected(message)}, got {type(value).__name__} "
                          f"{value!r}") from None
    for key, value in known.items():
        if isinstance(value, str) and isinstance(parsed[key], (bool, int, float)):
            mapping[key] = parsed[key]
    return mapping


def check_component(where: str, spec: Any, constructor_of: Callable[[str], Callable[..., Any]], *,
                    optional: bool = False) -> None:
    """Check a ``{name: ..., **kwargs}`` spec against the constructor ``constructor_of(name)`` selects."""
    if optional and (spec is None or spec == {} or (isinstance(spec, dict) and spec.get("name") in (None, "none"))):
        return
    spec = check_mapping(where, spec)
    name = spec.get("name")
    if not isinstance(name, str):
        raise RecipeError(f"{where}.name must name a component, got {name!r}")
    try:
        constructor = constructor_of(name)
    except ValueError as err:
        raise RecipeError(f"{where}.name: {err}") from None
    model_name = ("model_name",) if name.startswith("timm:") else ()  # given by the name
    spec.update(check_arguments(where, {k: v for k, v in spec.items() if k != "name"}, constructor, skip=model_name))


def check_trainer(where: str, section: Any) -> None:
    """Check a ``trainer`` section against ``lightning.Trainer`` (recipe-owned keys are refused)."""
    section = check_mapping(where, section)
    for key, why in RECIPE_TRAINER_KEYS.items():
        if key in section:
            raise RecipeError(f"{where}.{key} is set by the recipe ({why}); remove it from the config")
    check_arguments(where, section, L.Trainer)


def _int_list(where: str, value: Any, minimum: int) -> None:
    if not isinstance(value, list) or not value or not all(is_count(v, minimum) for v in value):
        raise RecipeError(f"{where} must be a non-empty list of ints >= {minimum}, got {value!r}")


def _lr_candidates(value: Any) -> None:
    if value is None:
        return
    valid = isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in value)
    if not valid or len(set(value)) != len(value):
        raise RecipeError(f"finetune.lr_candidates must be null or a non-empty list of distinct positive learning "
                          f"rates, got {value!r}")


def check_config(config: Any, datamodules: Registry[Any], recipe: str = "unfused") -> None:
    """Check the shape, keys and value types of a recipe's configuration (no data needed).

    Args:
        config: The merged configuration.
        datamodules: The registry ``data.name`` selects from.
        recipe: Whose configuration: ``unfused`` or ``simclrv2`` (see :data:`RECIPE_SCHEMAS`).

    Raises:
        RecipeError: naming the first problem: the key, what is wrong, and the closest valid key.
    """
    if recipe not in RECIPE_SCHEMAS:
        raise ValueError(f"unknown recipe {recipe!r}{closest(recipe, list(RECIPE_SCHEMAS))}")
    top_level, stages, sources = RECIPE_SCHEMAS[recipe]
    config = check_mapping("the config", config)
    check_keys("config", config, top_level)
    try:
        check_int("seed", config.get("seed", 0), 0)
        check_int("num_threads", config.get("num_threads"), 1, "null (torch's default)")
    except ValueError as err:
        raise RecipeError(str(err)) from None
    if not isinstance(config.get("pictures", True), bool):
        raise RecipeError(f"pictures must be true or false, got {config['pictures']!r}")

    data = check_mapping("data", config.get("data"))
    name = data.get("name", "digits")
    try:
        datamodule = datamodules.get(name)
    except ValueError as err:
        raise RecipeError(f"data.name: {err}") from None
    params = accepted_keys(datamodule)
    if "root" not in params and data.get("root") is not None:
        raise RecipeError(f"data.root is not used by data.name={name!r} (the data are embedded); for your own "
                          f"files set --data.name image_folder or audio_folder with --data.root PATH")
    if "root" in params and not data.get("root"):
        raise RecipeError(f"data.name={name!r} needs data.root (e.g. --data.root PATH)")
    given = {k: v for k, v in data.items() if k != "name" and not (k == "root" and v is None)}
    data.update(check_arguments("data", given, datamodule, skip=("labels_per_class", "train_split")))

    check_trainer("trainer", config.get("trainer"))
    teacher = check_mapping("teacher", config.get("teacher"))
    try:
        teacher_method = METHODS.get(teacher.get("method", DEFAULT_TEACHER))
    except ValueError as err:
        raise RecipeError(f"teacher.method: {err}") from None
    check_arguments("teacher.ema", teacher.get("ema"), EMATeacher)
    for stage, module, sections in (("teacher", teacher_method, TEACHER_SECTIONS), *stages):
        section = check_mapping(stage, config.get(stage))
        check_keys(stage, section, sections)
        if "encoder" in sections:
            if isinstance(section.get("encoder"), dict) and "checkpoint" in section["encoder"]:
                raise RecipeError(f"{stage}.encoder.checkpoint: the recipe trains its encoders itself; a checkpoint "
                                  f"in an encoder spec is for fewlabel fit / validate / test configs")
            check_component(f"{stage}.encoder", section.get("encoder"), encoder_constructor)
        if "augment" in sections:
            check_component(f"{stage}.augment", section.get("augment"), AUGMENTS.get, optional=True)
        if module is not None:
            check_arguments(f"{stage}.module", section.get("module"), module, skip=_SET_BY_RECIPE[stage])
        if "trainer" in sections:
            check_trainer(f"{stage}.trainer", section.get("trainer"))
    if "pseudo_labels" in top_level:
        check_arguments("pseudo_labels", config.get("pseudo_labels"), PseudoLabeler,
                        skip=_SET_BY_RECIPE["pseudo_labels"])

    finetune = check_mapping("finetune", config.get("finetune"))
    check_keys("finetune", finetune, FINETUNE_KEYS)
    _int_list("finetune.labels_per_class", finetune.get("labels_per_class"), 1)
    _int_list("finetune.seeds", finetune.get("seeds"), 0)
    if not isinstance(finetune.get("draws_together", True), bool):
        raise RecipeError(f"finetune.draws_together must be true or false, got {finetune['draws_together']!r}")
    _lr_candidates(finetune.get("lr_candidates"))
    if recipe == "simclrv2" and finetune.get("lr_candidates") is not None:
        raise RecipeError("finetune.lr_candidates is not supported by the simclrv2 recipe (its students distil "
                          "one fine-tuned teacher per draw); set finetune.module.lr instead")
    methods = check_mapping("finetune.methods", finetune.get("methods"))
    if not methods:
        raise RecipeError("finetune.methods is empty: name at least one method (e.g. unfused: {encoder_from: student})")
    for where, spec in [("finetune", finetune), *((f"finetune.methods.{m}", s) for m, s in methods.items())]:
        spec = check_mapping(where, spec)
        if where != "finetune":
            check_keys(where, spec, METHOD_KEYS)
            source = spec.get("encoder_from", "scratch")
            if source not in sources:
                raise RecipeError(f"{where}.encoder_from must be one of {list(sources)}, got {source!r}")
        check_component(f"{where}.augment", spec.get("augment"), AUGMENTS.get, optional=True)
        check_arguments(f"{where}.module", spec.get("module"), Classifier, skip=_SET_BY_RECIPE["finetune"])
        check_trainer(f"{where}.trainer", spec.get("trainer"))
