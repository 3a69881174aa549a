"""The built-in simulated abdominal MRI dataset: procedural anatomy rendered through MR signal equations.

Every case is a random upper abdomen built from ellipsoid-like solids in physical millimetres (body
wall with subcutaneous fat and muscle, ribs, spine with marrow, cortex, discs and CSF, paraspinal and
psoas muscles, aorta and IVC, liver with its vessels, gallbladder, stomach, pancreas, spleen, both
kidneys with cortex, medulla, sinus fat and pelvis, bowel loops in visceral fat, lung bases). Each
voxel of a 2x supersampled grid holds one tissue; tissues carry 1.5 T relaxation times, proton density
and a fat fraction (jittered per case). A modality renders the case through its sequence's signal
equation with separate water and fat components, W + F exp(i phi), averaged in complex form over the
supersampled grid (so fat-water boundary voxels cancel on out-of-phase images), then partial-volume
blur, a smooth multiplicative bias field and Rician noise.

Geometry convention (shared by the NIfTI files, the PNG slices and every array returned here):

- NIfTI data array shape (W, H, D) = (size, size, slices). Voxel (i, j, k): i = PNG column (image left
  = patient right, the radiological convention), j = PNG row (top = anterior), k = slice (inferior ->
  superior). PNG slice k is ``data[:, :, k].T``.
- The affine maps voxels to RAS+ world millimetres: diag(-col_mm, -row_mm, slice_mm) plus an origin that
  puts the volume centre at the world origin; ``nibabel.aff2axcodes`` gives ('L', 'P', 'S').
- Spacing lists are [row_mm, col_mm, slice_mm] (rows and columns share one pixel size).
- Internally the supersampled tissue grid is (z, row, col) with x (mm) growing to the image right
  (patient left), y (mm) growing to the image bottom (posterior) and z (mm) growing superiorly from the
  bottom edge of the slice stack. The stack always covers about 175-195 mm of upper abdomen, so the slice
  thickness is that coverage divided by the number of slices (7-8 mm for the default 24).

Randomness: each case's generator comes from ``numpy.random.SeedSequence((seed, crc32(modality), 0,
case index))`` (spawned into an anatomy stream and a rendering stream), never from global state, so every
modality gets its own unpaired anatomy and the same arguments always give the same bytes. ``render_case``
can also render one anatomy in several modalities (paired anatomy, for physics checks).

Modules: ``physics`` (tissue properties, sequences, signal equations), ``geometry`` (the grid and the solids),
``anatomy`` (where the organs go), ``cases`` (rendering one seeded case), ``dataset`` (writing the files).
"""

from mrgen.data.phantom.anatomy import ORGANS, Anatomy, sample_anatomy
from mrgen.data.phantom.cases import PhantomCase, render_case, simulate_case, split_cases
from mrgen.data.phantom.dataset import DEFAULT_MODALITIES, MODALITY_KEYS, display_uint8, generate_phantom_dataset
from mrgen.data.phantom.geometry import DEFAULT_SIZE, DEFAULT_SLICES
from mrgen.data.phantom.physics import SEQUENCES, Tissue

__all__ = [
    "DEFAULT_MODALITIES", "DEFAULT_SIZE", "DEFAULT_SLICES", "MODALITY_KEYS", "ORGANS", "SEQUENCES", "Anatomy",
    "PhantomCase", "Tissue", "display_uint8", "generate_phantom_dataset", "render_case", "sample_anatomy",
    "simulate_case", "split_cases",
]
