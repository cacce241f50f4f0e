"""Weight clustering (`workbench cluster`) and TFLM LUT compression (`export --format tflm --compress`), issue 15.
Compressed models must run bit-identically to the clustered model in the host TFLM interpreter and the firmware."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ConfigError, UnsupportedError


def _snap_per_channel(data: bytes, levels: int = 16) -> bytes:
    """The int8 model with every weight tensor reduced to ``levels`` values per channel (clustering
    without training: what a clustered model looks like after per-channel int8 quantization)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(data, 0)
    for t in m.subgraphs[0].tensors:
        buf = m.buffers[t.buffer].data
        if t.type != 9 or buf is None or len(buf) < 64:
            continue
        ax = t.quantization.quantizedDimension
        a = np.moveaxis(np.asarray(buf, np.uint8).view(np.int8).reshape(list(t.shape)), ax, 0).astype(np.float64)
        for c in range(a.shape[0]):
            lv = np.unique(np.quantile(a[c], np.linspace(0, 1, levels)).round())
            a[c] = lv[np.abs(a[c][..., None] - lv).argmin(-1)]
        m.buffers[t.buffer].data = np.frombuffer(np.moveaxis(a, 0, ax).astype(np.int8).tobytes(), np.uint8).copy()
    b = flatbuffers.Builder(1 << 16)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def clustered_int8(digits_tflite_int8, tmp_path_factory):
    p = tmp_path_factory.mktemp("clustered") / "digits_clustered.tflite"
    p.write_bytes(_snap_per_channel(digits_tflite_int8.read_bytes()))
    return p


def test_compress_bit_identical_in_host_tflm(clustered_int8, tmp_path):
    from workbench.export.compress import compress_tflite
    from workbench.export.strip import strip_tflite, verify_identical

    data, rep = compress_tflite(clustered_int8.read_bytes(), clustered_int8.name)
    out = tmp_path / "compressed.tflite"
    out.write_bytes(data)
    assert verify_identical(clustered_int8, out, samples=16, runtimes=("tflm",))["bit_identical"]
    stripped = tmp_path / "compressed_stripped.tflite"
    stripped.write_bytes(strip_tflite(data, out.name)[0])
    assert verify_identical(clustered_int8, stripped, samples=16, runtimes=("tflm",))["bit_identical"]
    done = {tuple(r["shape"]): r for r in rep.tensors}
    assert done[(10, 256)]["bits"] == 4 and done[(10, 256)]["estimated_bytes"] <= 0.6 * 2560
    assert all(r["bits"] <= 4 for r in rep.tensors)
    reasons = " ".join(r["reason"] for r in rep.left_alone)
    assert "int32 biases" in reasons and "too small" in reasons
    assert rep.bytes_after < rep.bytes_before
    assert stripped.stat().st_size <= 0.8 * clustered_int8.stat().st_size  # 7,464 -> ~5,550 B measured


def test_compress_refuses_unclustered(digits_tflite_int8):
    from workbench.export.compress import compress_tflite

    with pytest.raises(UnsupportedError) as e:
        compress_tflite(digits_tflite_int8.read_bytes(), digits_tflite_int8.name)
    assert "distinct values" in str(e.value) and "workbench cluster" in str(e.value)
    with pytest.raises(ConfigError):
        compress_tflite(digits_tflite_int8.read_bytes(), "x", max_bits=9)


def test_export_tflm_compress(clustered_int8, tmp_path):
    out = tmp_path / "proj"
    r = CliRunner().invoke(main, ["export", str(clustered_int8), "--format", "tflm", "--compress", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["metrics"]
    assert "TFLM_DECODE" in m["ops"] and m["compression"]["max_bits"] == 4 and m["compression"]["compressed"]
    assert m["compression"]["verify"]["runtimes"] == ["tflm"]
    assert m["model_bytes"] < clustered_int8.stat().st_size
    assert "AddDecode" in (out / "digits_clustered_op_resolver.h").read_text()
    r = CliRunner().invoke(main, ["export", str(clustered_int8), "--format", "tflm", "--compress", "2", "-o",
                                  str(tmp_path / "p2")])
    assert r.exit_code == 2 and "2-bit table" in r.output and not (tmp_path / "p2").exists()


def test_cluster_config_validation():
    from workbench.optimize.config import ClusterConfig

    for bad in ({"clusters": 1}, {"clusters": 0}, {"clusters": 300}, {"layers": (("(", 8),)}, {"layers": (("fc", 1),)}):
        with pytest.raises(ConfigError):
            ClusterConfig(**bad)
    cfg = ClusterConfig(clusters=16, layers=(("^fc$", 32), ("conv", 0)))
    assert cfg.clusters_for("fc") == 32 and cfg.clusters_for("conv2") == 0 and cfg.clusters_for("dense") == 16


def test_cluster_keras(digits_keras_path, tmp_path):
    out = tmp_path / "clustered.keras"
    r = CliRunner().invoke(main, ["cluster", str(digits_keras_path), "--clusters", "16", "--layer", "^fc$=8", "--train",
                                  "digits:train", "--val", "digits:test", "--epochs", "1", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    layers = {x["layer"]: x for x in d["layers"]}
    assert layers["fc"]["clusters"] == 8 and layers["fc"]["distinct_after"] <= 8
    assert layers["conv2"]["clusters"] == 16 and layers["conv2"]["distinct_after"] <= 16
    assert layers["conv1"]["clusters"] is None and "fewer than" in layers["conv1"]["reason"]
    assert abs(d["accuracy_drop_pp"]) < 3.0
    a = d["after"]["int8"]
    assert a["compressed_stripped_bytes"] < d["before"]["int8"]["stripped_bytes"]
    assert out.exists() and (tmp_path / "clustered.keras.json").exists()


@pytest.mark.slow
def test_cluster_torch(digits_torch_path, tmp_path):
    from workbench.optimize.cluster import cluster
    from workbench.optimize.config import ClusterConfig, TrainConfig
    from workbench.frontends.loader import LoadOptions

    rep = cluster(digits_torch_path, tmp_path / "c.pt", ClusterConfig(clusters=16, train=TrainConfig(epochs=1, lr=1e-4)),
                  "digits:train", "digits:test", load_options=LoadOptions(factory="workbench.builtin.models.reference:digits_torch"))
    d = rep.to_dict()
    for row in d["layers"]:
        if row["clusters"]:
            assert row["distinct_after"] <= 16
    assert abs(d["accuracy_drop_pp"]) < 3.0 and d["after"]["int8"]["compressed_stripped_bytes"]


@pytest.mark.slow
def test_compressed_bit_exact_on_firmware(clustered_int8, tmp_path):
    from workbench.emulate.firmware import firmware_support, run_firmware
    from workbench.export.compress import compress_tflite
    from workbench.export.strip import strip_tflite
    from workbench.frontends import load
    from workbench.runtimes.tflm import TflmRunner

    why = firmware_support("stm32l4r5")
    if why is not None:
        pytest.skip(str(why))
    comp = tmp_path / "c.tflite"
    comp.write_bytes(strip_tflite(compress_tflite(clustered_int8.read_bytes(), "c")[0], "c", "tflm")[0])
    x = np.random.default_rng(0).integers(-128, 128, size=(1, 8, 8, 1)).astype(np.int8)
    a, b = run_firmware(clustered_int8, "stm32l4r5", inputs=x), run_firmware(comp, "stm32l4r5", inputs=x)
    out = [np.asarray(r.outputs[0] if isinstance(r.outputs, tuple) else r.outputs).ravel() for r in (a, b)]
    assert np.array_equal(out[0], out[1])
    assert np.array_equal(out[1], np.asarray(TflmRunner(load(comp))._run(x)).ravel())
    assert any(op["op"] == "TFLM_DECODE" for op in b.per_op)
    assert b.instructions > a.instructions  # decoding costs instructions


def test_recipe_cluster_step_parses(tmp_path, digits_keras_path):
    from workbench.pipeline.recipe import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text(f"name: c\nmodels: [{{path: {digits_keras_path}}}]\ndata: {{train: digits:train, calib: digits:train}}\n"
                 "variants: [{name: c16, scheme: int8, cluster: {clusters: 16, epochs: 1, layers: {'^fc$': 8}}}]\n")
    rec = load_recipe(r)
    assert rec.variants[0].cluster == {"clusters": 16, "epochs": 1, "layers": {"^fc$": 8}}
    r.write_text(f"name: c\nmodels: [{{path: {digits_keras_path}}}]\nvariants: [{{name: c16, cluster: {{clusters: 16}}}}]\n")
    with pytest.raises(ConfigError, match="data.train"):
        load_recipe(r)
    r.write_text(f"name: c\nmodels: [{{path: {digits_keras_path}}}]\ndata: {{train: digits:train}}\n"
                 "variants: [{name: c16, cluster: {clusters: 16, bogus: 1}}]\n")
    with pytest.raises(ConfigError):
        load_recipe(r)


@pytest.mark.slow
def test_recipe_cluster_step_runs(tmp_path, digits_keras_path):
    r = tmp_path / "r.yaml"
    r.write_text(f"name: c\nmodels: [{{path: {digits_keras_path}}}]\n"
                 "data: {train: digits:train, calib: digits:train, eval: digits:test, eval_samples: 200, calib_samples: 100}\n"
                 "variants: [{name: c16, scheme: int8, formats: [tflite], cluster: {clusters: 16, epochs: 1}}]\n"
                 "targets: [stm32l4r5]\n")
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert rows and all(row["accuracy"] > 0.9 for row in rows if row.get("accuracy") is not None)


def test_recipe_deploy_step_gives_the_targets_the_stripped_and_compressed_model(tmp_path, digits_keras_path):
    """A variant with deploy: {strip, compress} is emulated (on the firmware) as TFLM would hold it:
    the flash and instruction counts are those of the deployed model, and DECODE shows per op."""
    from workbench.emulate.firmware import firmware_support

    if firmware_support("stm32l4r5"):
        pytest.skip(f"firmware emulation unavailable: {firmware_support('stm32l4r5')}")
    r = tmp_path / "r.yaml"
    r.write_text(f"name: d\nmodels: [{{path: {digits_keras_path}}}]\n"
                 "data: {train: digits:train, calib: digits:train, eval: digits:test, eval_samples: 100, calib_samples: 100}\n"
                 "variants: [{name: plain, scheme: int8}, {name: stripped, scheme: int8, deploy: {strip: portable}},\n"
                 "           {name: lut4, scheme: int8, cluster: {clusters: 16, epochs: 1}, deploy: {compress: 4}}]\n"
                 "targets: [stm32l4r5]\n")
    res = CliRunner().invoke(main, ["run", str(r), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rows = {row["variant"]: row for row in doc["rows"]}
    assert rows["stripped"]["bytes"] < rows["plain"]["bytes"] and rows["stripped"]["flash_bytes"] < rows["plain"]["flash_bytes"]
    assert rows["stripped"]["method"] == rows["lut4"]["method"] == "firmware"
    assert any(p["op"] == "TFLM_DECODE" for p in rows["lut4"]["per_op_instructions"])
    assert rows["lut4"]["target_accuracy"] > 0.85  # measured on the firmware: LiteRT cannot run DECODE
    info = doc["jobs"]["digits_keras/lut4"]["info"]["deploy"]
    assert info["compression"]["verify"] and info["plain_bytes"] > 0
