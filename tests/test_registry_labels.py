import pytest

from benchmark.errors import UnknownNameError
from benchmark.labels import CLASSES, canonical_name, class_index
from benchmark.registry import Registry


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
