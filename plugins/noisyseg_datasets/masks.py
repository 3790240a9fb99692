"""How the values in the ``folder`` dataset's mask files become class labels.

Decided with all masks together (every split), so that one odd mask cannot change what the others
mean. With no option set:

* all masks together hold at most two values (0/255, 0/1, 0/1000, ...): binary, the lower value
  is background and the higher foreground (a single value: 0 is background, anything else
  foreground);
* they hold exactly 0..K-1: K classes;
* anything else is an error naming the masks that hold the odd values (an anti-aliased edge of
  128s and 254s in one 0/255 mask must not turn a binary task into 255 classes).

``mask_threshold`` (label = value > threshold), ``mask_values`` (value -> class) and
``num_classes`` (labels 0..num_classes-1 as they are; two values for num_classes = 2) decide
instead.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from noisyseg import DataError


def _join(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _masks_holding(bad: dict[str, list[int]], what: str) -> str:
    """'mask NAME holds <what>s 1, 2' or 'masks NAME (1, 2), NAME (3) and 4 more hold <what>s'."""
    if len(bad) == 1:
        ((name, values),) = bad.items()
        return f"mask {name} holds {what}{'s' * (len(values) > 1)} {_join(values)}"
    shown = ", ".join(f"{name} ({_join(values)})" for name, values in list(bad.items())[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"masks {shown}{more} hold {what}s"


def _fixes(low: int, high: int) -> str:
    return (f"set dataset.options.mask_threshold={(low + high) // 2} to binarise, "
            f"dataset.options.mask_values='{{{low}: 0, {high}: 1}}'-style map, "
            "or dataset.options.num_classes for labelled masks")


def _outside(values: dict[str, set[int]], allowed: set[int]) -> dict[str, list[int]]:
    return {name: sorted(v - allowed) for name, v in values.items() if v - allowed}


def _binary(union: set[int]) -> dict[int, int]:
    if len(union) == 1:
        return {v: int(v != 0) for v in union}
    return {min(union): 0, max(union): 1}


def class_map(
    values: dict[str, set[int]],
    num_classes: int | None = None,
    threshold: float | None = None,
    mapping: dict[int, int] | None = None,
) -> tuple[dict[int, int], int]:
    """The class of every value found, and the number of classes.

    Args:
        values: each mask file's name (as errors show it) -> the values it holds.
        num_classes, threshold, mapping: the dataset's ``num_classes``, ``mask_threshold`` and
            ``mask_values`` options.
    """
    union = set().union(*values.values())
    if mapping is not None:
        unmapped = _outside(values, set(mapping))
        if unmapped:
            raise DataError(f"{_masks_holding(unmapped, 'value')} that dataset.options.mask_values "
                            "does not map; add them to the map")
        return dict(mapping), num_classes or max(max(mapping.values()) + 1, 2)
    if threshold is not None:
        return {v: int(v > threshold) for v in union}, num_classes or 2
    if num_classes is not None:
        if union <= set(range(num_classes)):
            return {v: v for v in union}, num_classes
        if num_classes == 2 and len(union) <= 2:
            return _binary(union), 2
        bad = _outside(values, set(range(num_classes)))
        raise DataError(f"{_masks_holding(bad, 'label')} outside the class range 0..{num_classes - 1} "
                        f"(dataset.options.num_classes = {num_classes}); {_fixes(0, max(union))}")
    if len(union) <= 2:
        return _binary(union), 2
    if union == set(range(len(union))):
        return {v: v for v in union}, len(union)
    counts = Counter(v for held in values.values() for v in held)
    low, high = sorted(sorted(counts, key=lambda v: (-counts[v], v))[:2])
    bad = _outside(values, {low, high})
    if len(bad) == len(values):  # no pair that most masks agree on
        raise DataError(f"the masks hold values {_join(sorted(union)[:10])}{' ...' * (len(union) > 10)}: "
                        f"neither two values (binary) nor the labels 0..K-1 of K classes; "
                        f"{_fixes(low, high)}")
    raise DataError(f"{_masks_holding(bad, 'value')} besides {low} and {high} (used by the other "
                    f"masks); {_fixes(low, high)}")


def apply_map(masks: np.ndarray, classes: dict[int, int]) -> np.ndarray:
    """Raw mask values -> class labels (every value must be in ``classes``).

    Shape:
        masks - any shape, integer; returns the same shape, int64
    """
    keys = np.array(sorted(classes), dtype=np.int64)
    labels = np.array([classes[k] for k in keys.tolist()], dtype=np.int64)
    return labels[np.searchsorted(keys, masks)]
