"""SimCLR-TS (Kukleva et al., ICLR 2023): SimCLR with the cosine temperature schedule, the published form
(Annusha/temperature_schedules README: train_simCLR.py --adj_tau cos, tau 0.1 to 1.0, t_max 200)."""

from duel.method_params import CosineTemperatureParams
from duel.methods.simclr import SimCLR
from duel.methods.temperature import CosineTemperature


class SimCLRTS(CosineTemperature, SimCLR):
    Params = CosineTemperatureParams
