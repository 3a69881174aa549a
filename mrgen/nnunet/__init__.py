"""nnU-Net v2 integration: raw-dataset export (synthetic and real), geometry sidecars, label mappings,
environment helpers and the short CPU trainer (``trainers/``). See docs/segmentation.md."""

from mrgen.data.index import IndexValidationError
from mrgen.data.modalities import RegistryError, UnknownModalityError
from mrgen.nnunet.dicom import DicomSeriesError
from mrgen.nnunet.env import NnUNetPathError
from mrgen.nnunet.export import ExportError
from mrgen.nnunet.geometry import GeometryError
from mrgen.nnunet.labels import LabelMappingError
from mrgen.nnunet.raw_dataset import RawDatasetError
from mrgen.nnunet.volumes import VolumeError

# Errors caused by the user's input; command-line scripts print their message without a traceback.
USER_ERRORS = (DicomSeriesError, NnUNetPathError, ExportError, GeometryError, LabelMappingError, RawDatasetError,
               VolumeError, IndexValidationError, RegistryError, UnknownModalityError)
