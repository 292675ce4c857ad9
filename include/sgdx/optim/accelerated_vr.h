#pragma once
// The accelerated variance-reduced methods, Katyusha and DASVRDA (one header each).
#include "sgdx/optim/dasvrda.h"
#include "sgdx/optim/katyusha.h"
