import pytest

from benchmark.core.errors import UnknownNameError
from benchmark.core.labels import CLASSES, canonical_name, class_index
from benchmark.core.registry import Registry


def test_canonical_order_is_rafdb_order():
    assert CLASSES == ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


@pytest.mark.parametrize("name,index", [("Angry", 5), ("happy", 3), ("SAD", 4), ("surprised", 0),
                                        ("disgusted", 2), ("fearful", 1), ("Neutral", 6)])
def test_synonyms_map_by_name(name, index):
    assert class_index(name) == index


def test_non_basic_is_none_and_unknown_raises():
    assert canonical_name("Contempt") is None
    with pytest.raises(KeyError):
        canonical_name("bored")


def test_registry_rejects_duplicates_and_suggests_close_name():
    reg: Registry[int] = Registry("thing")
    reg.add("cafe", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("cafe", 2)
    with pytest.raises(UnknownNameError, match="did you mean 'cafe'"):
        reg.get("cafee")


def test_dataset_registry_holds_every_reader():
    from benchmark.data import DATASETS

    for name in ("rafdb", "ferplus", "affectnet", "sfew", "mma", "imagefolder", "list",
                 "synth5/studio", "synth5/webcam", "synth5/wild", "synth5/film", "synth5/lowres"):
        assert name in DATASETS
    with pytest.raises(UnknownNameError, match="did you mean 'rafdb'"):
        DATASETS.get("raf-db")


def test_the_method_list_read_from_source_matches_the_imported_registry(tmp_path, monkeypatch):
    """`benchmark methods` reads names and descriptions from the decorators; importing registers
    the same; a plugin whose decorator is not a literal is imported instead of misread."""
    import importlib.metadata
    import sys

    from benchmark.training import plugins as method_index
    from benchmark.training.plugins import load_plugins

    methods = load_plugins()
    yes = {True: "yes", False: "no"}
    assert method_index.method_index() == [
        (n, yes[methods.get(n).cls.fuses], method_index.needs(methods.get(n).cls.needs_encoder,
                                                              methods.get(n).cls.needs_text_tower),
         methods.get(n).description) for n in methods.names()]
    assert {n for n, fuses, _, _ in method_index.method_index() if fuses == "yes"} >= {
        "erm", "cafe", "cafe_mask", "cafe_mask_sep", "cafe_nosigmoid", "clip_ft", "eac"}
    assert {n for n, _, need, _ in method_index.method_index() if need == "CLIP with its text tower"} == {
        "clip_zeroshot", "clip_adapter", "tip_adapter", "tip_adapter_f", "coop", "wise_ft"}

    plugin = tmp_path / "computed_plugin.py"
    plugin.write_text("from benchmark.api import register_method\nNAME = 'computed'\n"
                      "register_method(NAME, 'described')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(method_index._NotLiteral, match=r"computed_plugin.py:3"):
        method_index._registrations(plugin)
    point = importlib.metadata.EntryPoint("computed", "computed_plugin", method_index.ENTRY_POINT_GROUP)
    monkeypatch.setattr(method_index, "entry_points", lambda group: [point])
    loaded = []
    monkeypatch.setattr("benchmark.training.plugins.load_plugins", lambda: loaded.append(1) or methods)
    method_index.method_index()
    assert loaded == [1] and "computed_plugin" not in sys.modules  # fell back to the import path
