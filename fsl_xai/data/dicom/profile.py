"""The de-identification policy: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Table E.1-1 is applied with two of its options, both declared in every de-identified file:

- *Retain Patient Characteristics* (sex, age, size, weight are kept; subgroup analysis needs them);
- *Retain Longitudinal Temporal Information with Modified Dates* (dates are shifted by a keyed,
  per-patient offset, so intervals within a patient stay true; ``date_mode="remove"`` removes them).

Actions, as in the standard: ``D`` replace with a dummy value, ``Z`` replace with an empty value,
``X`` remove, ``U`` replace a UID by a keyed one (the same input UID always gives the same output
UID under the same secret), ``K`` keep. On top of the table, :func:`~fsl_xai.data.dicom.deid.deidentify_dataset`
removes every private tag, every curve (50xx) and overlay data/comment (60xx,3000/4000) element, every
remaining person name (VR PN), every element of the patient group (0010) that is not retained, shifts or
removes every remaining date (DA, DT), and replaces every remaining non-standard UID (VR UI).

Plain data, no pydicom: the policy can be read (and audited) without a DICOM toolkit.
"""

from __future__ import annotations

D, Z, X, U, K = "D", "Z", "X", "U", "K"

# (group, element): (keyword, action) -- the Basic Profile entries this library handles, with the
# Retain Patient Characteristics option applied (K on sex, age, size, weight).
BASIC_PROFILE: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x0012): ("InstanceCreationDate", X),
    (0x0008, 0x0013): ("InstanceCreationTime", X),
    (0x0008, 0x0014): ("InstanceCreatorUID", U),
    (0x0008, 0x0018): ("SOPInstanceUID", U),
    (0x0008, 0x0020): ("StudyDate", Z),
    (0x0008, 0x0021): ("SeriesDate", X),
    (0x0008, 0x0022): ("AcquisitionDate", X),
    (0x0008, 0x0023): ("ContentDate", Z),
    (0x0008, 0x002A): ("AcquisitionDateTime", X),
    (0x0008, 0x0030): ("StudyTime", Z),
    (0x0008, 0x0031): ("SeriesTime", X),
    (0x0008, 0x0032): ("AcquisitionTime", X),
    (0x0008, 0x0033): ("ContentTime", Z),
    (0x0008, 0x0050): ("AccessionNumber", Z),
    (0x0008, 0x0058): ("FailedSOPInstanceUIDList", U),
    (0x0008, 0x0080): ("InstitutionName", X),
    (0x0008, 0x0081): ("InstitutionAddress", X),
    (0x0008, 0x0082): ("InstitutionCodeSequence", X),
    (0x0008, 0x0090): ("ReferringPhysicianName", Z),
    (0x0008, 0x0092): ("ReferringPhysicianAddress", X),
    (0x0008, 0x0094): ("ReferringPhysicianTelephoneNumbers", X),
    (0x0008, 0x0096): ("ReferringPhysicianIdentificationSequence", X),
    (0x0008, 0x0201): ("TimezoneOffsetFromUTC", X),
    (0x0008, 0x1010): ("StationName", X),
    (0x0008, 0x1030): ("StudyDescription", X),
    (0x0008, 0x103E): ("SeriesDescription", X),
    (0x0008, 0x1040): ("InstitutionalDepartmentName", X),
    (0x0008, 0x1048): ("PhysiciansOfRecord", X),
    (0x0008, 0x1049): ("PhysiciansOfRecordIdentificationSequence", X),
    (0x0008, 0x1050): ("PerformingPhysicianName", X),
    (0x0008, 0x1052): ("PerformingPhysicianIdentificationSequence", X),
    (0x0008, 0x1060): ("NameOfPhysiciansReadingStudy", X),
    (0x0008, 0x1062): ("PhysiciansReadingStudyIdentificationSequence", X),
    (0x0008, 0x1070): ("OperatorsName", X),
    (0x0008, 0x1072): ("OperatorIdentificationSequence", X),
    (0x0008, 0x1080): ("AdmittingDiagnosesDescription", X),
    (0x0008, 0x1084): ("AdmittingDiagnosesCodeSequence", X),
    (0x0008, 0x1110): ("ReferencedStudySequence", X),
    (0x0008, 0x1111): ("ReferencedPerformedProcedureStepSequence", X),
    (0x0008, 0x1120): ("ReferencedPatientSequence", X),
    (0x0008, 0x1155): ("ReferencedSOPInstanceUID", U),
    (0x0008, 0x2111): ("DerivationDescription", X),
    (0x0008, 0x3010): ("IrradiationEventUID", U),
    (0x0010, 0x0010): ("PatientName", D),
    (0x0010, 0x0020): ("PatientID", D),
    (0x0010, 0x0021): ("IssuerOfPatientID", X),
    (0x0010, 0x0030): ("PatientBirthDate", Z),
    (0x0010, 0x0032): ("PatientBirthTime", X),
    (0x0010, 0x0040): ("PatientSex", K),
    (0x0010, 0x0050): ("PatientInsurancePlanCodeSequence", X),
    (0x0010, 0x0101): ("PatientPrimaryLanguageCodeSequence", X),
    (0x0010, 0x1000): ("OtherPatientIDs", X),
    (0x0010, 0x1001): ("OtherPatientNames", X),
    (0x0010, 0x1002): ("OtherPatientIDsSequence", X),
    (0x0010, 0x1005): ("PatientBirthName", X),
    (0x0010, 0x1010): ("PatientAge", K),
    (0x0010, 0x1020): ("PatientSize", K),
    (0x0010, 0x1030): ("PatientWeight", K),
    (0x0010, 0x1040): ("PatientAddress", X),
    (0x0010, 0x1050): ("InsurancePlanIdentification", X),
    (0x0010, 0x1060): ("PatientMotherBirthName", X),
    (0x0010, 0x1080): ("MilitaryRank", X),
    (0x0010, 0x1081): ("BranchOfService", X),
    (0x0010, 0x1090): ("MedicalRecordLocator", X),
    (0x0010, 0x2000): ("MedicalAlerts", X),
    (0x0010, 0x2110): ("Allergies", X),
    (0x0010, 0x2150): ("CountryOfResidence", X),
    (0x0010, 0x2152): ("RegionOfResidence", X),
    (0x0010, 0x2154): ("PatientTelephoneNumbers", X),
    (0x0010, 0x2160): ("EthnicGroup", X),
    (0x0010, 0x2180): ("Occupation", X),
    (0x0010, 0x21A0): ("SmokingStatus", X),
    (0x0010, 0x21B0): ("AdditionalPatientHistory", X),
    (0x0010, 0x21C0): ("PregnancyStatus", X),
    (0x0010, 0x21D0): ("LastMenstrualDate", X),
    (0x0010, 0x21F0): ("PatientReligiousPreference", X),
    (0x0010, 0x2203): ("PatientSexNeutered", X),
    (0x0010, 0x4000): ("PatientComments", X),
    (0x0018, 0x1000): ("DeviceSerialNumber", X),
    (0x0018, 0x1002): ("DeviceUID", U),
    (0x0018, 0x1030): ("ProtocolName", X),
    (0x0018, 0x1400): ("AcquisitionDeviceProcessingDescription", X),
    (0x0018, 0x700A): ("DetectorID", X),
    (0x0020, 0x000D): ("StudyInstanceUID", U),
    (0x0020, 0x000E): ("SeriesInstanceUID", U),
    (0x0020, 0x0010): ("StudyID", Z),
    (0x0020, 0x0052): ("FrameOfReferenceUID", U),
    (0x0020, 0x0200): ("SynchronizationFrameOfReferenceUID", U),
    (0x0020, 0x4000): ("ImageComments", X),
    (0x0020, 0x9161): ("ConcatenationUID", U),
    (0x0028, 0x1199): ("PaletteColorLookupTableUID", U),
    (0x0032, 0x1032): ("RequestingPhysician", X),
    (0x0032, 0x1033): ("RequestingService", X),
    (0x0032, 0x1060): ("RequestedProcedureDescription", X),
    (0x0032, 0x4000): ("StudyComments", X),
    (0x0038, 0x0010): ("AdmissionID", X),
    (0x0038, 0x0300): ("CurrentPatientLocation", X),
    (0x0038, 0x0400): ("PatientInstitutionResidence", X),
    (0x0038, 0x0500): ("PatientState", X),
    (0x0040, 0x0006): ("ScheduledPerformingPhysicianName", X),
    (0x0040, 0x0244): ("PerformedProcedureStepStartDate", X),
    (0x0040, 0x0245): ("PerformedProcedureStepStartTime", X),
    (0x0040, 0x0253): ("PerformedProcedureStepID", X),
    (0x0040, 0x0254): ("PerformedProcedureStepDescription", X),
    (0x0040, 0x0275): ("RequestAttributesSequence", X),
    (0x0040, 0x1001): ("RequestedProcedureID", X),
    (0x0040, 0x1400): ("RequestedProcedureComments", X),
    (0x0040, 0x2016): ("PlacerOrderNumberImagingServiceRequest", Z),
    (0x0040, 0x2017): ("FillerOrderNumberImagingServiceRequest", Z),
    (0x0040, 0x2400): ("ImagingServiceRequestComments", X),
    (0x0040, 0xA123): ("PersonName", X),
    (0x0040, 0xA124): ("UID", U),
    (0x0040, 0xA730): ("ContentSequence", X),
    (0x0088, 0x0140): ("StorageMediaFileSetUID", U),
    (0x3006, 0x0024): ("ReferencedFrameOfReferenceUID", U),
    (0x0400, 0x0561): ("OriginalAttributesSequence", X),
}

#: patient-group (0010) elements that survive de-identification (everything else in 0010 goes)
RETAINED_PATIENT_TAGS = frozenset({(0x0010, 0x0010), (0x0010, 0x0020), (0x0010, 0x0040), (0x0010, 0x1010),
                                   (0x0010, 0x1020), (0x0010, 0x1030)})
#: dates shifted (not emptied/removed) in "shift" mode, because they carry the timeline
SHIFTED_DATES = frozenset({(0x0008, 0x0020), (0x0008, 0x0021), (0x0008, 0x0022), (0x0008, 0x0023),
                           (0x0008, 0x002A), (0x0008, 0x0012), (0x0040, 0x0244)})
#: times kept in "shift" mode (the option keeps times; dates alone are shifted)
KEPT_TIMES = frozenset({(0x0008, 0x0013), (0x0008, 0x0030), (0x0008, 0x0031), (0x0008, 0x0032),
                        (0x0008, 0x0033), (0x0040, 0x0245)})
#: UIDs under this root are standard DICOM identifiers (SOP classes, transfer syntaxes, ...): kept
DICOM_UID_ROOT = "1.2.840.10008."
#: DICOM codes of the profile and options applied (CID 7050), written into the file
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113108", "Retain Patient Characteristics Option"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
