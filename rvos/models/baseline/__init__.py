"""The dense baseline family: its model (backbone, cross-modal fusion, Conv3d temporal
blocks, upsampling head), its objective and its build functions."""
