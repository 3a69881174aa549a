"""Real-volume export: exact 3D round trip with the affine, CHAOS DICOM/PNG layout, readers and errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mrgen.data.index import load_index
from mrgen.evaluation.volume_eval import EvaluationInputError, EvaluationOptions, evaluate_folder
from mrgen.io.images import write_gray
from mrgen.nnunet.chaos import chaos_sources, grey_to_labels
from mrgen.nnunet.env import NnUNetPathError, raw_root
from mrgen.nnunet.geometry import SliceGeometry, slices_to_volume
from mrgen.nnunet.labels import ExportLabels, evaluation_labels
from mrgen.nnunet.raw_dataset import RawDatasetError, read_slice
from mrgen.nnunet.real_data import RealDataOptions, VolumeInputs, convert_real_volumes, prepare_real_data
from mrgen.nnunet.volumes import VolumeError, sources_from_folder, sources_from_jsonl

ORGANS = ["liver", "right kidney", "left kidney", "spleen"]
# voxel axes -> A, I, R (a permuted, flipped, anisotropic grid) so the LPS view must reorder and flip
OBLIQUE = np.array([[0.0, 0.0, 4.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, -0.8, 0.0, 3.0], [0, 0, 0, 1]])


def _labelled_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[3:12, 5:20, 2:7] = 1
    labels[14:20, 22:30, 1:5] = 2
    labels[2:6, 25:33, 6:8] = 4
    image = (rng.normal(size=shape) + labels * 3).astype(np.float32)
    return image, labels


def _write_pair(folder, case_id, image, labels, affine):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{case_id}_image.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{case_id}_label.nii.gz")


def _slices(dataset_dir, split, geometry, kind="labels"):
    return [read_slice(dataset_dir / f"{kind}{split}" / f"{n}{geometry.file_ending}") for n in geometry.slice_names]


@pytest.mark.parametrize("file_format,size", [("png", 64), ("png", None), ("nifti", 48)])
def test_round_trip_is_exact_with_affine(tmp_path, file_format, size):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "vols", "c1", image, labels, OBLIQUE)
    sources = sources_from_folder(tmp_path / "vols", None, ORGANS[:2] + ["left kidney", "spleen"], modality="T2-SPIR")
    report = convert_real_volumes(sources, tmp_path / "raw", RealDataOptions(
        5, "RT", "test", ExportLabels(tuple(ORGANS), "test"), file_format, size))
    geometry = SliceGeometry.load(report.dataset_dir / "geometryTs" / "c1.json")
    assert geometry.original_axcodes == ["A", "I", "R"] and geometry.view_axcodes == ["L", "P", "S"]
    assert geometry.in_plane_spacing_mm == pytest.approx([1.5, 4.0])
    assert geometry.slice_spacing_mm == pytest.approx(0.8)
    assert geometry.source_slice_index == list(range(36, -1, -1))  # voxel axis 1 runs inferior
    rebuilt = slices_to_volume(_slices(report.dataset_dir, "Ts", geometry), geometry)
    np.testing.assert_array_equal(rebuilt, labels)

    out = tmp_path / "eval"
    gt_dir = report.dataset_dir / "labelsTs"
    summary = evaluate_folder(gt_dir, gt_dir, report.dataset_dir / "geometryTs", out, evaluation_labels("CHAOSMR"),
                              evaluation_labels("CHAOSMR"), EvaluationOptions())
    assert summary.organs["liver"]["dice"] == 1.0 and summary.organs["liver"]["hd95"] == 0.0
    assert np.isnan(summary.organs["left kidney"]["dice"])  # absent in both: excluded by default
    written = nib.load(out / "nifti" / "pred" / "c1.nii.gz")
    np.testing.assert_allclose(written.affine, OBLIQUE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_nifti_slices_carry_their_place_in_space(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "vols", "c1", image, labels, OBLIQUE)
    report = convert_real_volumes(sources_from_folder(tmp_path / "vols", None, ORGANS), tmp_path / "raw",
                                  RealDataOptions(6, "Affine", "test", file_format="nifti", size=None, write_index=False))
    geometry = SliceGeometry.load(report.dataset_dir / "geometryTs" / "c1.json")
    k, row, col = 5, 4, 2
    exported = nib.load(report.dataset_dir / "imagesTs" / f"{geometry.slice_names[k]}_0000.nii.gz")
    world = exported.affine @ [col, row, 0, 1]  # the slice's own position: its 999 mm normal is not used
    # view slice k, row r, column c is source voxel (A index = P-flip of row, I index = slice flip, R = col flip)
    source_voxel = [23 - 1 - row, 37 - 1 - k, 9 - 1 - col, 1]
    np.testing.assert_allclose(world, OBLIQUE @ source_voxel)


def test_index_of_real_slices_loads(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "vols", "c1", image, labels, np.diag([-2.0, -2.0, 5.0, 1.0]))
    report = convert_real_volumes(sources_from_folder(tmp_path / "vols", None, ORGANS, modality="T2-SPIR"),
                                  tmp_path / "raw", RealDataOptions(7, "Index", "train", size=32))
    entries = load_index(report.index_path)
    assert len(entries) == 9 and entries[0].modality == "T2 SPIR Abdomen MRI"
    assert entries[0].shape == (37, 23) and entries[0].spacing == (2.0, 2.0, 5.0)
    with_liver = [e for e in entries if "liver" in e.organs]
    assert len(with_liver) == 5 and all(e.mask_paths[0] is not None for e in with_liver)
    assert json.loads((report.dataset_dir / "dataset.json").read_text())["numTraining"] == 9


def test_jsonl_volume_list(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "volumes", "P_000", image, labels, np.diag([-2.0, -2.0, 5.0, 1.0]))
    line = {"image": "volumes/P_000_image.nii.gz", "mask": "volumes/P_000_label.nii.gz", "label": ORGANS,
            "modality": "T2 SPIR Abdomen MRI", "dataset": "Phantom_MRI", "patient_id": "P_000"}
    (tmp_path / "list.jsonl").write_text(json.dumps(line) + "\n")
    sources = sources_from_jsonl([tmp_path / "list.jsonl"])
    volume = sources[0].load()
    assert volume.case_id == "P_000" and volume.label_names == ORGANS and volume.dataset == "Phantom_MRI"
    np.testing.assert_array_equal(volume.label_map(ExportLabels(("spleen",), "t")), (labels == 4).astype(np.uint8))
    with pytest.raises(VolumeError, match="'pancreas'.*not among"):
        volume.label_map(ExportLabels(("pancreas",), "t"))


def _write_dicom(path, pixels, position, instance, spacing=(1.5, 1.2)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing = list(spacing)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = list(position)
    ds.InstanceNumber = instance
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _chaos_patient(root, patient, rows=20, cols=24, slices=5, same_names=True):
    """A T2SPIR series stored in reverse anatomical order (file 1 is the most superior slice)."""
    grey = (0, 63, 126, 189, 252)
    truth = np.zeros((rows, cols, slices), np.uint8)  # (row, col, z from inferior to superior)
    for z in range(slices):
        truth[2 + z:8, 3:10, z] = 1
        truth[12:16, 2 + z:6 + z, z] = 2
        truth[12:16, 15:20, z] = 3 if z % 2 else 0
        truth[2:5, 18:22, z] = 4
    for i in range(slices):
        z = slices - 1 - i
        name = f"IMG-0001-{i + 1:05d}"
        pixels = 100 + 10 * truth[:, :, z] + z
        _write_dicom(root / patient / "T2SPIR/DICOM_anon" / f"{name}.dcm", pixels, (-50.0, -40.0, 6.0 * z), i + 1)
        png = np.array(grey, np.uint8)[truth[:, :, z]]
        png[png == 126] = 130  # inside the right-kidney band 110-135
        write_gray(root / patient / "T2SPIR/Ground" / (f"{name}.png" if same_names else f"liver_GT_{i:03d}.png"), png)
    return truth


def test_chaos_layout_converts(tmp_path):
    truth = _chaos_patient(tmp_path / "MR", "7")
    sources = chaos_sources(tmp_path / "MR", "T2-SPIR")
    volume = sources[0].load()
    assert volume.case_id == "CHAOS_7_T2SPIR" and volume.image.shape == (24, 20, 5)
    np.testing.assert_allclose(nib.affines.voxel_sizes(volume.affine), [1.2, 1.5, 6.0])
    np.testing.assert_allclose(volume.image[:, :, 0].T, 100 + 10 * truth[:, :, 0])  # most inferior first
    np.testing.assert_array_equal(volume.labels, truth.transpose(1, 0, 2))
    np.testing.assert_allclose(volume.affine @ [0, 0, 4, 1], [50.0, 40.0, 24.0, 1.0])  # LPS -> RAS

    report = convert_real_volumes(sources, tmp_path / "raw", RealDataOptions(8, "CHAOS", "test", size=32))
    geometry = SliceGeometry.load(report.dataset_dir / "geometryTs" / "CHAOS_7_T2SPIR.json")
    assert geometry.in_plane_spacing_mm == pytest.approx([1.5, 1.2]) and geometry.slice_spacing_mm == pytest.approx(6.0)
    np.testing.assert_array_equal(slices_to_volume(_slices(report.dataset_dir, "Ts", geometry), geometry),
                                  truth.transpose(1, 0, 2))


def test_chaos_labels_not_named_after_their_slices_are_refused(tmp_path):
    _chaos_patient(tmp_path / "MR", "7", same_names=False)
    with pytest.raises(VolumeError, match="CHAOS_7_T2SPIR: the ground-truth PNGs .* cannot be proven"):
        chaos_sources(tmp_path / "MR", "T2-SPIR")[0].load()


def _chaos_t1_dual(root, patient, rows=20, cols=24, slices=5):
    """The release's T1 DUAL layout: both echoes at the same positions, InPhase files named with even numbers from
    the top slice down, OutPhase files with odd numbers whose InstanceNumbers run the other way, and the Ground PNGs
    named after the InPhase files only."""
    grey = (0, 63, 126, 189, 252)
    truth = np.zeros((rows, cols, slices), np.uint8)
    for z in range(slices):
        truth[2 + z:8, 3:10, z] = 1
        truth[12:16, 2 + z:6 + z, z] = 2
        truth[2:5, 18:22, z] = 4 if z % 2 else 0
    folder = root / patient / "T1DUAL"
    for i in range(slices):
        z = slices - 1 - i  # in-phase file i holds the slice i from the top
        position = (-50.0, -40.0, 8.0 * z)
        in_name, out_name = f"IMG-0004-{2 * i + 2:05d}", f"IMG-0004-{2 * i + 1:05d}"
        _write_dicom(folder / "DICOM_anon/InPhase" / f"{in_name}.dcm", 100 + 10 * truth[:, :, z], position, i + 1)
        _write_dicom(folder / "DICOM_anon/OutPhase" / f"{out_name}.dcm", 50 + 10 * truth[:, :, z], position, z + 1)
        write_gray(folder / "Ground" / f"{in_name}.png", np.array(grey, np.uint8)[truth[:, :, z]])
    return truth


@pytest.mark.parametrize("sequence", ["T1-InPhase", "T1-OutPhase"])
def test_chaos_t1_dual_labels_land_on_their_own_slices_in_both_echoes(tmp_path, sequence):
    truth = _chaos_t1_dual(tmp_path / "MR", "3")
    volume = chaos_sources(tmp_path / "MR", sequence)[0].load()
    np.testing.assert_array_equal(volume.labels, truth.transpose(1, 0, 2))
    base = 100 if sequence == "T1-InPhase" else 50
    np.testing.assert_allclose(volume.image, (base + 10 * truth).transpose(1, 0, 2).astype(np.float32))


def test_chaos_out_phase_slice_without_an_in_phase_partner_is_refused(tmp_path):
    _chaos_t1_dual(tmp_path / "MR", "3")
    for path in (tmp_path / "MR/3/T1DUAL/DICOM_anon/OutPhase").glob("*.dcm"):  # half a slice off its partner
        header = pydicom.dcmread(path)
        header.ImagePositionPatient = [*header.ImagePositionPatient[:2], float(header.ImagePositionPatient[2]) + 4.0]
        header.save_as(path)
    with pytest.raises(VolumeError, match="CHAOS_3_T1OutPhase: OutPhase slice .* has 0 InPhase slices"):
        chaos_sources(tmp_path / "MR", "T1-OutPhase")[0].load()


def _promise12_case(folder, name, labels=True):
    """A MetaImage case as the release writes it: (z, y, x) data, LPS geometry, a flipped row axis."""
    import SimpleITK as sitk

    image, label = _labelled_volume((20, 24, 6))  # (x, y, z)
    label = (label > 0).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for array, stem in ((image, name), *(((label, f"{name}_segmentation"),) if labels else ())):
        itk = sitk.GetImageFromArray(array.transpose(2, 1, 0))
        itk.SetSpacing((0.625, 0.625, 3.6))
        itk.SetOrigin((-40.0, 30.0, -20.0))
        itk.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(itk, str(folder / f"{stem}.mhd"))
    return image, label


def test_promise12_metaimage_layout_converts_with_its_geometry(tmp_path):
    image, label = _promise12_case(tmp_path / "TrainingData_Part1", "Case00")
    _promise12_case(tmp_path / "TrainingData_Part2", "Case01", labels=False)
    sources = VolumeInputs(promise12_dir=[tmp_path / "TrainingData_Part1", tmp_path / "TrainingData_Part2"]).sources()
    assert [s.case_id for s in sources] == ["Case00", "Case01"]
    volume = sources[0].load()
    np.testing.assert_allclose(volume.image, image)
    np.testing.assert_array_equal(volume.labels, label)
    assert volume.label_names == ["prostate"] and sources[1].load().labels is None
    # LPS origin (-40, 30, -20), rows running to -y (anterior in LPS): in RAS x and y change sign
    np.testing.assert_allclose(volume.affine @ [1, 1, 1, 1], [40.0 - 0.625, -30.0 + 0.625, -20.0 + 3.6, 1.0])

    report = convert_real_volumes(sources[:1], tmp_path / "raw", RealDataOptions(9, "P12", "test", size=32))
    geometry = SliceGeometry.load(report.dataset_dir / "geometryTs" / "Case00.json")
    assert geometry.in_plane_spacing_mm == pytest.approx([0.625, 0.625]) and geometry.slice_spacing_mm == pytest.approx(3.6)
    np.testing.assert_array_equal(slices_to_volume(_slices(report.dataset_dir, "Ts", geometry), geometry), label)


def test_promise12_label_off_its_image_grid_is_refused(tmp_path):
    import SimpleITK as sitk

    _promise12_case(tmp_path, "Case00")
    label = sitk.ReadImage(str(tmp_path / "Case00_segmentation.mhd"))
    label.SetSpacing((0.7, 0.7, 3.6))
    sitk.WriteImage(label, str(tmp_path / "Case00_segmentation.mhd"))
    with pytest.raises(VolumeError, match="Case00_segmentation.mhd: shape .* or geometry differs"):
        VolumeInputs(promise12_dir=[tmp_path]).sources()[0].load()


def test_grey_levels_map_to_bands():
    grey = np.array([[0, 55, 70, 71], [110, 135, 175, 200], [240, 255, 100, 63]], np.uint8)
    np.testing.assert_array_equal(grey_to_labels(grey), [[0, 1, 1, 0], [2, 2, 3, 3], [4, 4, 0, 1]])


def test_missing_raw_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(NnUNetPathError, match="--out DIR or set the nnUNet_raw"):
        raw_root(None)
    with pytest.raises(NnUNetPathError, match="nnUNet_raw"):
        prepare_real_data(VolumeInputs(image_dir=tmp_path), None, RealDataOptions(1, "X"))


def test_input_errors(tmp_path):
    with pytest.raises(VolumeError, match="exactly one input"):
        VolumeInputs().sources()
    with pytest.raises(VolumeError, match="does not exist"):
        sources_from_jsonl([tmp_path / "absent.jsonl"])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "nope.nii.gz", "label": ORGANS}) + "\n")
    with pytest.raises(VolumeError, match=r"bad.jsonl:1: file .*nope.nii.gz does not exist"):
        sources_from_jsonl([tmp_path / "bad.jsonl"])
    with pytest.raises(VolumeError, match="--sequence"):
        VolumeInputs(chaos_root=tmp_path).sources()


def test_existing_split_is_not_overwritten_silently(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "vols", "c1", image, labels, np.diag([-2.0, -2.0, 5.0, 1.0]))
    sources = sources_from_folder(tmp_path / "vols", None, ORGANS)
    options = RealDataOptions(9, "Twice", "test", size=32, write_index=False)
    convert_real_volumes(sources, tmp_path / "raw", options)
    with pytest.raises(RawDatasetError, match="--overwrite"):
        convert_real_volumes(sources, tmp_path / "raw", options)
    options.overwrite = True
    convert_real_volumes(sources, tmp_path / "raw", options)


def _exported_case(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    _write_pair(tmp_path / "vols", "c1", image, labels, np.diag([-2.0, -2.0, 5.0, 1.0]))
    return convert_real_volumes(sources_from_folder(tmp_path / "vols", None, ORGANS), tmp_path / "raw",
                                RealDataOptions(10, "Err", "test", size=32, write_index=False)).dataset_dir


def test_evaluation_names_case_and_counts_on_mismatch(tmp_path):
    dataset_dir = _exported_case(tmp_path)
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sorted((dataset_dir / "labelsTs").glob("*.png"))[:-2]:
        (pred / path.name).write_bytes(path.read_bytes())
    labels = evaluation_labels("CHAOSMR")
    with pytest.raises(EvaluationInputError, match=r"case c1: 7 prediction slices .* has 9 slices"):
        evaluate_folder(pred, dataset_dir / "labelsTs", dataset_dir / "geometryTs", tmp_path / "out", labels, labels,
                        EvaluationOptions())
    with pytest.raises(EvaluationInputError, match="geometry folder .* does not exist"):
        evaluate_folder(pred, dataset_dir / "labelsTs", tmp_path / "nowhere", tmp_path / "out", labels, labels,
                        EvaluationOptions())
    (dataset_dir / "labelsTs" / "c1_s004.png").unlink()
    for path in sorted((dataset_dir / "labelsTs").glob("*.png")):
        (pred / path.name).write_bytes(path.read_bytes())
    (pred / "c1_s004.png").write_bytes((pred / "c1_s003.png").read_bytes())
    with pytest.raises(EvaluationInputError, match=r"case c1: 8 ground truth slices .* has 9; missing e.g. \['c1_s004.png'\]"):
        evaluate_folder(pred, dataset_dir / "labelsTs", dataset_dir / "geometryTs", tmp_path / "out", labels, labels,
                        EvaluationOptions())


def test_amos22_release_reads_through_its_dataset_json_and_picks_the_mr_cases(tmp_path):
    names = ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver"]
    root = tmp_path / "amos22"
    training = []
    for number, seed in ((1, 0), (507, 1)):  # AMOS numbers its MR cases from 500
        image, labels = _labelled_volume((23, 37, 9), seed)
        labels[labels == 4] = 6  # the spleen stand-in becomes the liver, label 6
        case = f"amos_{number:04d}"
        for folder, data in (("imagesTr", image), ("labelsTr", labels)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, OBLIQUE), root / folder / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "AMOS", "labels": {str(i): name for i, name in enumerate(["background", *names])}, "training": training}))
    (mr,) = VolumeInputs(msd_dir=root, cases=["amos_0507"], modality="T2 Abdomen MRI").sources()
    volume = mr.load()
    assert volume.case_id == "amos_0507" and volume.label_names == names and volume.dataset == "AMOS"
    liver = volume.label_map(ExportLabels(("liver",), "t"))
    np.testing.assert_array_equal(liver, (_labelled_volume((23, 37, 9), 1)[1] == 4).astype(np.uint8))
    np.testing.assert_allclose(volume.affine, OBLIQUE)


def test_msd_task_and_nnunet_style_folders(tmp_path):
    image, labels = _labelled_volume((23, 37, 9))
    labels = np.minimum(labels, 2)  # MSD prostate: 1 PZ, 2 TZ
    affine = np.diag([-0.6, -0.6, 3.6, 1.0])
    task = tmp_path / "Task05_Prostate"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.stack([image, -image], axis=-1), affine), task / "imagesTr" / "prostate_00.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), task / "labelsTr" / "prostate_00.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Prostate", "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}]}))
    adc = VolumeInputs(msd_dir=task, channel=1).sources()[0].load()
    assert adc.case_id == "prostate_00_ch1" and adc.label_names == ["PZ", "TZ"]
    np.testing.assert_array_equal(adc.image, -image)
    with pytest.raises(VolumeError, match="pick a channel"):
        VolumeInputs(msd_dir=task).sources()[0].load()

    nnunet_style = VolumeInputs(image_dir=task / "imagesTr", label_dir=task / "labelsTr", label_names=["PZ", "TZ"],
                                channel=0).sources()
    t2 = nnunet_style[0].load()
    assert t2.case_id == "prostate_00" and t2.source_label.endswith("labelsTr/prostate_00.nii.gz")
    np.testing.assert_array_equal(t2.label_map(ExportLabels(("PZ", "TZ"), "t")), labels)
