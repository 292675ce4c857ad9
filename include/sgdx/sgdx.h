#pragma once
// Umbrella header for sgdx.
#include "sgdx/checkpoint.h"
#include "sgdx/config.h"
#include "sgdx/data/cifar10.h"
#include "sgdx/data/idx.h"
#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/data/tensor_dataset.h"
#include "sgdx/models/models.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/rsgd_step.h"
#include "sgdx/optim/rsgd.h"
