"""jointsparse.info: the MAC table of a file, whatever input size the file records."""

from __future__ import annotations

import pytest
import torch

from jointsparse.codecs import FormatError, encode
from jointsparse.info import InfoError, info_payload
from jointsparse.models import get_model


def _file(tmp_path, input_size, m=2):
    torch.manual_seed(0)
    model = get_model("vgg_small", width=0.125, hidden=16)
    path = tmp_path / "model.jsz"
    encode(model, path, bits=3, m=m, winograd_sparsity=0.5, provenance={"data": {"name": "digits", "input_size": input_size}})
    return path


def test_the_recorded_input_size_gives_the_mac_table(tmp_path):
    payload = info_payload(str(_file(tmp_path, [1, 16, 16])))
    assert payload["macs"]["input_size"] == [1, 16, 16] and payload["macs"]["dense"] > 0
    assert info_payload(str(_file(tmp_path, [1, 16, 16], m=4)), [1, 8, 8])["macs"]["input_size"] == [1, 8, 8]


@pytest.mark.parametrize("recorded", [[1, 2**20, 2**20], [1, 1.5, 16], [1, 16], "16", [0, 16, 16], [1, 1, 1], [3, 16, 16]])
def test_a_recorded_input_size_it_cannot_use_is_a_format_error(tmp_path, recorded):
    # Too large (a forward pass would allocate it), not integers, or not what the network takes.
    with pytest.raises(FormatError, match="recorded input size"):
        info_payload(str(_file(tmp_path, recorded)))


def test_a_given_input_size_it_cannot_use_is_an_info_error(tmp_path):
    with pytest.raises(InfoError, match="input size"):
        info_payload(str(_file(tmp_path, [1, 16, 16])), [1, 2**20, 16])


def test_a_huge_recorded_input_size_within_the_limit_costs_nothing(tmp_path):
    # 65536 x 65536 pixels: the output sizes come from a forward pass on the meta device.
    payload = info_payload(str(_file(tmp_path, [1, 65536, 65536])))
    assert payload["macs"]["dense"] > 10**12
