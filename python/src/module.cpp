// sgdx._C: the Python face of the C++ library. Nothing here computes a rule: the
// optimizers, samplers and the per-sample capture are the C++ objects themselves,
// and the functional ops are registered with the dispatcher (torch.ops.sgdx.*).
//
// Why pybind11 for the rich objects (not TorchBind): the optimizers and the capture
// call back into Python (closures, the full-gradient closure) and hold Python models'
// parameters; pybind11 (shipped in torch's include directory) carries callables, dicts
// and errors across directly, while TorchBind objects would need every callback and
// option re-declared as TorchScript types that nothing here needs.
#include <torch/extension.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "sgdx/config.h"
#include "sgdx/cpu_isa.h"
#include "sgdx/data/distributed.h"
#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/dist/communicator.h"
#include "sgdx/dist/data_parallel.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/rsgd_step.h"
#include "sgdx/optim/dasvrda.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/katyusha.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "sgdx/optim/vr_base.h"

#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;
using torch::optim::Optimizer;

namespace {

/// Archives hold int64; the unsigned fields (seeds) are stored as their bits, so a
/// Python int in [2^63, 2^64) becomes the int64 with those bits.
int64_t int_value(const std::string& key, const py::handle& v) {
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow == 0 && !(x == -1 && PyErr_Occurred())) return static_cast<int64_t>(x);
  PyErr_Clear();
  if (overflow > 0) {
    const unsigned long long u = PyLong_AsUnsignedLongLong(v.ptr());
    if (!PyErr_Occurred()) return static_cast<int64_t>(u);
    PyErr_Clear();
  }
  TORCH_CHECK_VALUE(false, "'", key, "' does not fit 64 bits: ", std::string(py::repr(v)));
}

/// Seeds are unsigned: the dict shows them as the Python int the user gave.
bool unsigned_key(const std::string& key) {
  return key == "seed" || (key.size() > 5 && key.compare(key.size() - 5, 5, "/seed") == 0);
}

// ---------------------------------------------------------------------------
// Archives <-> Python dicts. The C++ objects' own serialize() is the one place
// their fields are named, typed and validated; these two functions only move the
// values between an archive and a dict.

/// An archive's bytes, and an archive read back from bytes (onto `device` when given).
std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::stringstream bytes;
  archive.save_to(bytes);
  return bytes.str();
}

torch::serialize::InputArchive archive_of_bytes(const std::string& data,
                                                std::optional<c10::Device> device = std::nullopt) {
  std::stringstream bytes{data};
  torch::serialize::InputArchive in;
  in.load_from(bytes, device);
  return in;
}

/// What was written into `archive`, readable (an OutputArchive cannot be read).
torch::serialize::InputArchive reread(torch::serialize::OutputArchive& archive,
                                      std::optional<c10::Device> device = std::nullopt) {
  return archive_of_bytes(archive_bytes(archive), device);
}

/// Writes one value as the objects' serialize() do: tensors as buffers.
void write_value(torch::serialize::OutputArchive& archive, const std::string& key, const c10::IValue& v) {
  if (v.isTensor()) {
    archive.write(key, v.toTensor(), /*is_buffer=*/true);
  } else {
    archive.write(key, v);
  }
}

/// Every key of `archive` (written by the object itself) as a dict.
py::dict archive_to_dict(torch::serialize::OutputArchive& archive) {
  auto in = reread(archive);
  py::dict out;
  for (const auto& key : in.keys()) {
    c10::IValue v;
    in.read(key, v);
    if (v.isTensor()) {
      out[py::str(key)] = py::cast(v.toTensor());
    } else if (v.isDouble()) {
      out[py::str(key)] = v.toDouble();
    } else if (v.isBool()) {
      out[py::str(key)] = v.toBool();
    } else if (v.isInt()) {
      if (unsigned_key(key)) {
        out[py::str(key)] = static_cast<uint64_t>(v.toInt());
      } else {
        out[py::str(key)] = v.toInt();
      }
    }  // nested archives (none in the objects exposed here) are not part of a dict
  }
  return out;
}

/// The IValue of Python value `v` for `key`, typed like `like` (the object's own
/// current value of that key) when given: an int option stays int, a float one float.
c10::IValue to_ivalue(const std::string& key, const py::handle& v, const c10::IValue* like) {
  if (THPVariable_Check(v.ptr())) return c10::IValue(THPVariable_Unpack(v.ptr()));
  const bool is_bool = py::isinstance<py::bool_>(v);
  if (like != nullptr && like->isDouble()) {
    TORCH_CHECK_TYPE(!is_bool && (py::isinstance<py::float_>(v) || py::isinstance<py::int_>(v)), "option '",
                     key, "' must be a float, got ", std::string(py::repr(v)));
    return c10::IValue(v.cast<double>());
  }
  if (like != nullptr && like->isBool()) {
    TORCH_CHECK_TYPE(is_bool, "option '", key, "' must be a bool, got ", std::string(py::repr(v)));
    return c10::IValue(v.cast<bool>());
  }
  if (like != nullptr && like->isInt()) {
    TORCH_CHECK_TYPE(!is_bool && py::isinstance<py::int_>(v), "option '", key, "' must be an int, got ",
                     std::string(py::repr(v)));
    return c10::IValue(int_value(key, v));
  }
  if (is_bool) return c10::IValue(v.cast<bool>());
  if (py::isinstance<py::int_>(v)) return c10::IValue(int_value(key, v));
  if (py::isinstance<py::float_>(v)) return c10::IValue(v.cast<double>());
  TORCH_CHECK_TYPE(false, "'", key, "' must be a tensor, bool, int or float, got ", std::string(py::repr(v)));
}

/// Reads `values` into `object` through its serialize(InputArchive): keys it has are
/// replaced (typed like its current values), keys it lacks are refused by name.
template <typename Object>
void assign_from_dict(Object& object, const py::dict& values, const char* what,
                      std::optional<c10::Device> device = std::nullopt) {
  torch::serialize::OutputArchive current;
  object.serialize(current);
  auto cur = reread(current);
  const auto keys = cur.keys();
  torch::serialize::OutputArchive next;
  for (const auto& key : keys) {
    c10::IValue v;
    cur.read(key, v);
    if (values.contains(key)) v = to_ivalue(key, values[py::str(key)], &v);
    write_value(next, key, v);
  }
  for (const auto& item : values) {
    const auto key = item.first.cast<std::string>();
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
    TORCH_CHECK_VALUE(!item.second.is_none(), what, ": unknown field '", key, "'");
    write_value(next, key, to_ivalue(key, item.second, nullptr));
  }
  auto in = reread(next, device);
  object.serialize(in);
}

/// Sets `values` into options `o`. fused_cuda chooses how this process computes (a
/// backend), so it is not in the archive and is set on its own.
template <typename Options>
void set_options(Options& o, const py::dict& values, const char* who) {
  py::dict rest;
  for (const auto& item : values) {
    if (item.first.cast<std::string>() == "fused_cuda") {
      if constexpr (requires { o.fused_cuda(true); }) {
        o.fused_cuda(item.second.cast<bool>());
        continue;
      }
    }
    rest[item.first] = item.second;
  }
  assign_from_dict(o, rest, who);
}

template <typename Options>
py::dict options_to_dict(const Options& o) {
  torch::serialize::OutputArchive a;
  o.serialize(a);
  return archive_to_dict(a);
}

/// Options from a dict of C++ field names (the first argument of the constructor is
/// `ctor_key`, "lr" or "L"); unknown names are refused.
template <typename Options>
Options options_from_dict(const py::dict& d, const char* ctor_key, const char* who) {
  TORCH_CHECK_VALUE(d.contains(ctor_key), who, ": '", ctor_key, "' is required");
  Options o(d[ctor_key].cast<double>());
  set_options(o, d, who);
  return o;
}

// ---------------------------------------------------------------------------
// Python callables as LibTorch closures. The callable is held in a shared block whose
// destructor takes the GIL, so the C++ code may copy and drop the closure without it.

struct PyCallable {
  py::object fn;
  explicit PyCallable(py::object f) : fn(std::move(f)) {}
  PyCallable(const PyCallable&) = delete;
  PyCallable& operator=(const PyCallable&) = delete;
  ~PyCallable() {
    py::gil_scoped_acquire gil;
    fn = py::object();
  }
};

Optimizer::LossClosure to_closure(const py::object& f) {
  if (f.is_none()) return nullptr;
  auto held = std::make_shared<PyCallable>(f);
  return [held]() -> at::Tensor {
    py::gil_scoped_acquire gil;
    py::object r = held->fn();
    if (r.is_none()) return at::Tensor();  // no loss: what a step without one does
    TORCH_CHECK_TYPE(THPVariable_Check(r.ptr()), "the closure must return a tensor (the loss) or None, got ",
                     std::string(py::repr(r)));
    return THPVariable_Unpack(r.ptr());
  };
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t ? *t : at::Tensor();
}

// ---------------------------------------------------------------------------
// Optimizers: one template for the five classes.

template <typename Opt, typename Options, typename State>
struct OptimizerHandle {
  std::unique_ptr<Opt> opt;
  const char* name;
  const char* ctor_key;

  Options& group_options(size_t g) {
    TORCH_CHECK_INDEX(g < opt->param_groups().size(), name, ": no parameter group ", g, " (",
                      opt->param_groups().size(), " groups)");
    return static_cast<Options&>(opt->param_groups()[g].options());
  }
  State* state_of(const at::Tensor& p) {
    auto it = opt->state().find(p.unsafeGetTensorImpl());
    return it == opt->state().end() ? nullptr : static_cast<State*>(it->second.get());
  }
};

template <typename Opt, typename Options, typename State>
py::class_<OptimizerHandle<Opt, Options, State>> bind_optimizer(py::module_& m, const char* name,
                                                                const char* ctor_key) {
  using H = OptimizerHandle<Opt, Options, State>;
  auto cls = py::class_<H>(m, name);
  cls.def(py::init([name, ctor_key](const std::vector<std::pair<std::vector<at::Tensor>, py::dict>>& groups,
                                    const py::dict& defaults) {
            auto make = [&](const py::dict& d) {
              return std::make_unique<Options>(options_from_dict<Options>(d, ctor_key, name));
            };
            std::vector<torch::optim::OptimizerParamGroup> pg;
            for (const auto& [params, options] : groups) pg.emplace_back(params, make(options));
            auto h = std::make_unique<H>();
            h->opt = std::make_unique<Opt>(pg, options_from_dict<Options>(defaults, ctor_key, name));
            h->name = name;
            h->ctor_key = ctor_key;
            return h;
          }),
          py::arg("groups"), py::arg("defaults"));
  cls.def(
      "add_param_group",
      [](H& h, const std::vector<at::Tensor>& params, const py::dict& options) {
        h.opt->add_param_group(torch::optim::OptimizerParamGroup(
            params, std::make_unique<Options>(options_from_dict<Options>(options, h.ctor_key, h.name))));
      },
      py::arg("params"), py::arg("options"));
  cls.def(
      "step",
      [](H& h, const py::object& closure) -> std::optional<at::Tensor> {
        auto c = to_closure(closure);
        at::Tensor loss;
        {
          py::gil_scoped_release nogil;
          loss = h.opt->step(c);
        }
        return loss.defined() ? std::optional<at::Tensor>(loss) : std::nullopt;
      },
      py::arg("closure") = py::none());
  cls.def(
      "step_scaled",
      [](H& h, const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
         const py::object& closure) -> std::optional<at::Tensor> {
        auto c = to_closure(closure);
        at::Tensor loss;
        {
          py::gil_scoped_release nogil;
          loss = h.opt->step_scaled(or_undefined(grad_scale), or_undefined(found_inf), c);
        }
        return loss.defined() ? std::optional<at::Tensor>(loss) : std::nullopt;
      },
      py::arg("grad_scale"), py::arg("found_inf"), py::arg("closure") = py::none());
  cls.def("set_communicator",
          [](H& h, const std::shared_ptr<sgdx::dist::Communicator>& comm) { h.opt->set_communicator(comm); });
  cls.def("num_groups", [](H& h) { return h.opt->param_groups().size(); });
  cls.def("options", [](H& h, size_t g) { return options_to_dict(h.group_options(g)); });
  cls.def("defaults", [](H& h) { return options_to_dict(static_cast<const Options&>(h.opt->defaults())); });
  cls.def("set_lr", [](H& h, size_t g, double lr) {
    auto& o = h.group_options(g);
    o.set_lr(lr);
    o.validate();
  });
  cls.def("set_options", [](H& h, size_t g, const py::dict& values) {
    auto copy = h.group_options(g);  // validated whole before it replaces the group's
    set_options(copy, values, h.name);
    h.group_options(g) = copy;
  });
  // Per-parameter state as a dict of its fields (None before the first step).
  cls.def("param_state", [](H& h, const at::Tensor& p) -> py::object {
    const auto* st = h.state_of(p);
    if (st == nullptr) return py::none();
    torch::serialize::OutputArchive a;
    st->serialize(a);
    return archive_to_dict(a);
  });
  cls.def("set_param_state", [](H& h, const at::Tensor& p, const py::dict& values) {
    auto st = std::make_unique<State>();
    assign_from_dict(*st, values, h.name, p.device());
    h.opt->state()[p.unsafeGetTensorImpl()] = std::move(st);
  });
  // The optimizer-wide part of the C++ checkpoint (group options, counters, loss
  // statistics): the per-parameter state is left out (it travels as tensors in the
  // PyTorch-format state_dict), by saving with the state map set aside.
  cls.def("save_extra", [](H& h) {
    auto& state = h.opt->state();
    auto held = std::move(state);
    state.clear();
    std::string bytes;
    try {
      torch::serialize::OutputArchive a;
      h.opt->save(a);
      bytes = archive_bytes(a);
    } catch (...) {
      state = std::move(held);
      throw;
    }
    state = std::move(held);
    return py::bytes(bytes);
  });
  cls.def("clear_state", [](H& h) { h.opt->state().clear(); });
  cls.def("load_extra", [](H& h, const py::bytes& data) {
    auto a = archive_of_bytes(std::string(data));
    h.opt->load(a);
  });
  return cls;
}

template <typename Cls>
void bind_vr_extras(Cls& cls) {
  using H = typename Cls::type;
  cls.def("set_full_gradient_closure",
          [](H& h, const py::object& f) { h.opt->set_full_gradient_closure(to_closure(f)); });
  cls.def("set_local_components", [](H& h, int64_t c) { h.opt->set_local_components(c); });
  cls.def("gradient_evaluations", [](H& h) { return h.opt->gradient_evaluations(); });
}

// ---------------------------------------------------------------------------
// The per-sample capture over a Python model: a LibTorch module tree with the same
// names, types and parameter tensors (the capture reads the autograd graph, which
// Python and C++ models build alike, and names layers from the module tree).

struct PyPerSample {
  std::shared_ptr<torch::nn::Module> root;
  std::unique_ptr<sgdx::ops::PerSampleGradients> capture;
};

/// modules: (dotted name, type name, [(parameter name, tensor)]) for every module in
/// named_modules() order (pre-order, the root "" first).
std::shared_ptr<torch::nn::Module> mirror_modules(
    const std::vector<std::tuple<std::string, std::string, std::vector<std::pair<std::string, at::Tensor>>>>&
        modules) {
  TORCH_CHECK_VALUE(!modules.empty() && std::get<0>(modules.front()).empty(),
                    "per-sample gradients: the module list must start with the model itself");
  std::map<std::string, std::shared_ptr<torch::nn::Module>> by_name;
  std::shared_ptr<torch::nn::Module> root;
  for (const auto& [name, type, params] : modules) {
    auto m = std::make_shared<torch::nn::Module>(type);
    if (name.empty()) {
      root = m;
    } else {
      const auto dot = name.rfind('.');
      const auto parent = dot == std::string::npos ? std::string() : name.substr(0, dot);
      const auto leaf = dot == std::string::npos ? name : name.substr(dot + 1);
      auto it = by_name.find(parent);
      TORCH_CHECK_VALUE(it != by_name.end(), "per-sample gradients: module '", name,
                        "' is listed before its parent");
      it->second->register_module(leaf, m);
    }
    for (const auto& [pname, t] : params) m->register_parameter(pname, t, t.requires_grad());
    by_name[name] = m;
  }
  return root;
}

template <typename E>
E enum_from(const std::string& s, std::initializer_list<std::pair<const char*, E>> names, const char* what) {
  std::string known;
  for (const auto& [n, e] : names) {
    if (s == n) return e;
    known += std::string(known.empty() ? "" : ", ") + n;
  }
  TORCH_CHECK_VALUE(false, "per-sample gradients: unknown ", what, " '", s, "' (one of ", known, ")");
}

/// A sampler's state as a dict of its save()'s fields, and loaded back from one.
template <typename Sampler>
py::dict sampler_dict(const Sampler& s) {
  torch::serialize::OutputArchive a;
  s.save(a);
  return archive_to_dict(a);
}

template <typename Sampler>
void sampler_from_dict(Sampler& s, const py::dict& d) {
  torch::serialize::OutputArchive a;
  for (const auto& item : d) {
    const auto key = item.first.cast<std::string>();
    write_value(a, key, to_ivalue(key, item.second, nullptr));
  }
  auto in = reread(a);
  s.load(in);
}

/// The distributed samplers' state holds lists and the gathered updates: it travels as
/// the C++ archive's bytes.
template <typename Sampler>
py::bytes sampler_bytes(const Sampler& s) {
  torch::serialize::OutputArchive a;
  s.save(a);
  return py::bytes(archive_bytes(a));
}

template <typename Sampler>
void sampler_from_bytes(Sampler& s, const py::bytes& data) {
  auto in = archive_of_bytes(std::string(data));
  s.load(in);
}

// ---------------------------------------------------------------------------
// A torch.distributed process group as sgdx's Communicator: every collective calls
// the Python object (sgdx/dist.py, over torch.distributed) with the GIL held, so the
// C++ optimizers and samplers agree across the ranks of the user's own group.

class PyCommunicator final : public sgdx::dist::Communicator {
 public:
  explicit PyCommunicator(const py::object& group)
      : group_(std::make_shared<PyCallable>(group)),
        rank_(group.attr("rank")().cast<int>()),
        world_(group.attr("world_size")().cast<int>()) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  void all_reduce_sum(std::vector<at::Tensor>& tensors) override { call("all_reduce_sum", tensors); }
  void all_reduce_max(std::vector<at::Tensor>& tensors) override { call("all_reduce_max", tensors); }
  void broadcast(std::vector<at::Tensor>& tensors, int root) override {
    py::gil_scoped_acquire gil;
    group_->fn.attr("broadcast")(tensors, root);
  }
  at::Tensor all_gather(const at::Tensor& tensor) override {
    py::gil_scoped_acquire gil;
    return group_->fn.attr("all_gather")(tensor).cast<at::Tensor>();
  }
  void barrier() override {
    py::gil_scoped_acquire gil;
    group_->fn.attr("barrier")();
  }

 private:
  void call(const char* what, std::vector<at::Tensor>& tensors) {
    py::gil_scoped_acquire gil;
    group_->fn.attr(what)(tensors);  // in place: the list holds the same tensors
  }
  std::shared_ptr<PyCallable> group_;
  int rank_, world_;
};

// ---------------------------------------------------------------------------
// Functional ops for the dispatcher (torch.ops.sgdx.*); their fake implementations
// are registered from Python (sgdx/_ops.py).

void rsgd_step_op(at::TensorList params, at::TensorList grads, at::TensorList memory,
                  at::IntArrayRef tensor_ids, at::IntArrayRef steps, c10::ArrayRef<double> probs, double lr,
                  double weight_decay, int64_t seed, bool per_element, bool memory_previous) {
  sgdx::ops::RSGDStepConfig config;
  config.lr = lr;
  config.weight_decay = weight_decay;
  config.seed = static_cast<uint64_t>(seed);
  config.per_element = per_element;
  config.memory_previous = memory_previous;
  sgdx::ops::rsgd_step_(params, grads, memory, tensor_ids, steps, probs, config);
}

void elastic_net_prox_op(const at::Tensor& v, double c, double l1, double l2) {
  auto t = v;
  sgdx::optim::elastic_net_prox_(t, c, l1, l2);
}

at::Tensor upper_bound_scores_op(const at::Tensor& logits, const at::Tensor& targets) {
  return sgdx::data::upper_bound_scores(logits, targets);
}

}  // namespace

TORCH_LIBRARY(sgdx, m) {
  m.def(
      "rsgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] memory, int[] tensor_ids, int[] steps, "
      "float[] probs, float lr, float weight_decay, int seed, bool per_element, bool memory_previous) -> ()");
  m.def("elastic_net_prox_(Tensor(a!) v, float c, float l1, float l2) -> ()");
  m.def("upper_bound_scores(Tensor logits, Tensor targets) -> Tensor");
}

TORCH_LIBRARY_IMPL(sgdx, CPU, m) {
  m.impl("rsgd_step_", &rsgd_step_op);
  m.impl("elastic_net_prox_", &elastic_net_prox_op);
  m.impl("upper_bound_scores", &upper_bound_scores_op);
}

TORCH_LIBRARY_IMPL(sgdx, CUDA, m) {
  m.impl("rsgd_step_", &rsgd_step_op);
  m.impl("elastic_net_prox_", &elastic_net_prox_op);
  m.impl("upper_bound_scores", &upper_bound_scores_op);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "sgdx's C++ library (optimizers, samplers, per-sample gradients)";

  // C++ errors keep their message (without the C++ backtrace) and their kind.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  using namespace sgdx::optim;
  bind_optimizer<RSGD, RSGDOptions, RSGDParamState>(m, "RSGD", "lr");
  auto gq =
      bind_optimizer<GradQueueSGDM, GradQueueSGDMOptions, GradQueueSGDMParamState>(m, "GradQueueSGDM", "lr");
  using GQ = OptimizerHandle<GradQueueSGDM, GradQueueSGDMOptions, GradQueueSGDMParamState>;
  gq.def("observe_loss", [](GQ& h, double loss) { h.opt->observe_loss(loss); });
  gq.def("last_step_info", [](GQ& h) {
    const auto& i = h.opt->last_step_info();
    py::dict d;
    d["mean_rho"] = i.mean_rho;
    d["window"] = i.window;
    d["cluster_sizes"] = i.cluster_sizes;
    d["kmeans_iterations"] = i.kmeans_iterations;
    return d;
  });
  gq.def("state_bytes", [](GQ& h) { return h.opt->state_bytes(); });
  gq.def(
      "clustered_step",
      [](GQ& h, const at::Tensor& losses, const at::Tensor& features, PyPerSample* capture) {
        py::gil_scoped_release nogil;  // it runs backward (Python hooks take the GIL on engine threads)
        return h.opt->clustered_step(losses, features, capture ? capture->capture.get() : nullptr);
      },
      py::arg("losses"), py::arg("features"), py::arg("capture") = nullptr);
  auto svrg = bind_optimizer<SVRG, SVRGOptions, SVRGParamState>(m, "SVRG", "lr");
  bind_vr_extras(svrg);
  svrg.def("stage", [](OptimizerHandle<SVRG, SVRGOptions, SVRGParamState>& h) { return h.opt->stage(); });
  auto katyusha = bind_optimizer<Katyusha, KatyushaOptions, KatyushaParamState>(m, "Katyusha", "L");
  bind_vr_extras(katyusha);
  auto dasvrda = bind_optimizer<DASVRDA, DASVRDAOptions, DASVRDAParamState>(m, "DASVRDA", "L");
  bind_vr_extras(dasvrda);
  dasvrda.def("restarts", [](OptimizerHandle<DASVRDA, DASVRDAOptions, DASVRDAParamState>& h) {
    return h.opt->restarts();
  });

  // --- per-sample gradients
  py::class_<PyPerSample>(m, "PerSampleGradients")
      .def(
          py::init([](const std::vector<std::tuple<std::string, std::string,
                                                   std::vector<std::pair<std::string, at::Tensor>>>>& modules,
                      const std::string& reduction, const std::string& strategy,
                      const std::vector<std::string>& ignore, const std::string& backend) {
            using namespace sgdx::ops;
            PerSampleOptions o;
            o.reduction = enum_from<LossReduction>(
                reduction, {{"mean", LossReduction::mean}, {"sum", LossReduction::sum}}, "reduction");
            o.strategy = enum_from<NormStrategy>(strategy,
                                                 {{"automatic", NormStrategy::automatic},
                                                  {"ghost", NormStrategy::ghost},
                                                  {"materialize", NormStrategy::materialize}},
                                                 "strategy");
            o.backend = enum_from<PerSampleBackend>(backend,
                                                    {{"automatic", PerSampleBackend::automatic},
                                                     {"aten", PerSampleBackend::aten},
                                                     {"fused_cuda", PerSampleBackend::fused_cuda}},
                                                    "backend");
            o.ignore = ignore;
            auto h = std::make_unique<PyPerSample>();
            h->root = mirror_modules(modules);
            h->capture = std::make_unique<PerSampleGradients>(*h->root, o);
            return h;
          }),
          py::arg("modules"), py::arg("reduction"), py::arg("strategy"), py::arg("ignore"),
          py::arg("backend"))
      .def("attach", [](PyPerSample& c, const at::Tensor& loss, int64_t b) { c.capture->attach(loss, b); })
      .def("ready", [](PyPerSample& c) { return c.capture->ready(); })
      .def("norms", [](PyPerSample& c) { return c.capture->norms(); })
      .def("squared_norms", [](PyPerSample& c) { return c.capture->squared_norms(); })
      .def("layer_squared_norms", [](PyPerSample& c) { return c.capture->layer_squared_norms(); })
      .def("layer_names", [](PyPerSample& c) { return c.capture->layer_names(); })
      .def("gram", [](PyPerSample& c, const at::Tensor& s) { return c.capture->gram(s); })
      .def("dot",
           [](PyPerSample& c, const std::vector<std::optional<at::Tensor>>& d) {
             std::vector<at::Tensor> dir;
             for (const auto& t : d) dir.push_back(or_undefined(t));
             return c.capture->dot(dir);
           })
      .def("group_sums",
           [](PyPerSample& c, const at::Tensor& a, int64_t k) {
             std::vector<std::optional<at::Tensor>> out;
             for (const auto& t : c.capture->group_sums(a, k))
               out.push_back(t.defined() ? std::optional<at::Tensor>(t) : std::nullopt);
             return out;
           })
      .def("per_sample_grad",
           [](PyPerSample& c, const std::string& n) { return c.capture->per_sample_grad(n); })
      .def("batch_size", [](PyPerSample& c) { return c.capture->batch_size(); });

  // --- samplers
  using namespace sgdx::data;
  py::class_<ImportanceSampler>(m, "ImportanceSampler")
      .def(py::init(
               [](int64_t size, double mix, uint64_t seed, int64_t batches_per_epoch, double initial_score) {
                 ImportanceSamplerOptions o;
                 o.mix = mix;
                 o.seed = seed;
                 o.batches_per_epoch = batches_per_epoch;
                 o.initial_score = initial_score;
                 return std::make_unique<ImportanceSampler>(size, o);
               }),
           py::arg("size"), py::arg("mix"), py::arg("seed"), py::arg("batches_per_epoch"),
           py::arg("initial_score"))
      .def("reset", [](ImportanceSampler& s) { s.reset(); })
      // The next batch with its weights, drawn and taken at once (None at the epoch's end).
      .def("draw",
           [](ImportanceSampler& s, size_t b) -> std::optional<std::pair<at::Tensor, at::Tensor>> {
             if (!s.next(b)) return std::nullopt;
             auto batch = s.take();
             return std::make_pair(at::tensor(c10::ArrayRef<int64_t>(batch.indices)), batch.weights);
           })
      .def("update", &ImportanceSampler::update, py::arg("indices"), py::arg("scores"), py::arg("beta") = 0.0)
      .def("probabilities", &ImportanceSampler::probabilities)
      .def("size", &ImportanceSampler::size)
      .def("taken", &ImportanceSampler::taken)
      .def("state", &sampler_dict<ImportanceSampler>)
      .def("load_state", &sampler_from_dict<ImportanceSampler>);

  py::class_<TemperatureSchedule>(m, "TemperatureSchedule")
      .def(py::init<std::vector<std::pair<int64_t, double>>>(), py::arg("points"))
      .def_static("constant", &TemperatureSchedule::constant, py::arg("tau"))
      .def_static("cooldown", &TemperatureSchedule::cooldown, py::arg("total_steps"),
                  py::arg("tau_high") = 5.0, py::arg("tau_low") = 1.0)
      .def("at", &TemperatureSchedule::at, py::arg("step"))
      .def("points", &TemperatureSchedule::points);

  py::class_<TemperatureSampler>(m, "TemperatureSampler")
      .def(py::init<const at::Tensor&, TemperatureSchedule, uint64_t, int64_t, int64_t, int64_t>(),
           py::arg("group_ids"), py::arg("schedule"), py::arg("seed"), py::arg("batches_per_epoch"),
           py::arg("num_groups"), py::arg("stream"))
      .def("reset", [](TemperatureSampler& s) { s.reset(); })
      .def("draw",
           [](TemperatureSampler& s, size_t b) -> std::optional<at::Tensor> {
             auto batch = s.next(b);
             if (!batch) return std::nullopt;
             std::vector<int64_t> idx(batch->begin(), batch->end());
             return at::tensor(c10::ArrayRef<int64_t>(idx));
           })
      .def("step", &TemperatureSampler::step)
      .def("current_tau", &TemperatureSampler::current_tau)
      .def("sizes", &TemperatureSampler::sizes)
      .def("state", &sampler_dict<TemperatureSampler>)
      .def("load_state", &sampler_from_dict<TemperatureSampler>);

  // --- data-parallel
  py::class_<sgdx::dist::Communicator, std::shared_ptr<sgdx::dist::Communicator>>(m, "Communicator")
      .def(py::init([](const py::object& group) -> std::shared_ptr<sgdx::dist::Communicator> {
             return std::make_shared<PyCommunicator>(group);
           }),
           py::arg("group"))
      .def("rank", &sgdx::dist::Communicator::rank)
      .def("world_size", &sgdx::dist::Communicator::world_size);
  py::class_<sgdx::dist::DataParallel>(m, "DataParallel")
      .def(py::init([](std::vector<at::Tensor> params, std::shared_ptr<sgdx::dist::Communicator> comm,
                       int64_t bucket_bytes) {
             sgdx::dist::DataParallelOptions o;
             o.bucket_bytes = bucket_bytes;
             return std::make_unique<sgdx::dist::DataParallel>(std::move(params), std::move(comm), o);
           }),
           py::arg("params"), py::arg("comm"), py::arg("bucket_bytes"))
      .def("broadcast_from_root", &sgdx::dist::DataParallel::broadcast_from_root,
           py::call_guard<py::gil_scoped_release>())
      .def("broadcast_parameters", &sgdx::dist::DataParallel::broadcast_parameters,
           py::call_guard<py::gil_scoped_release>())
      .def("average_gradients", &sgdx::dist::DataParallel::average_gradients,
           py::call_guard<py::gil_scoped_release>())
      .def("bucket_count", &sgdx::dist::DataParallel::bucket_count)
      .def("gradient_bytes", &sgdx::dist::DataParallel::gradient_bytes);
  py::class_<DistributedImportanceSampler>(m, "DistributedImportanceSampler")
      .def(py::init([](int64_t size, std::shared_ptr<sgdx::dist::Communicator> comm, double mix,
                       uint64_t seed, int64_t batches_per_epoch, double initial_score, int64_t lag) {
             DistributedImportanceOptions o;
             o.mix = mix;
             o.seed = seed;
             o.batches_per_epoch = batches_per_epoch;
             o.initial_score = initial_score;
             o.lag = lag;
             return std::make_unique<DistributedImportanceSampler>(size, std::move(comm), o);
           }),
           py::arg("size"), py::arg("comm"), py::arg("mix"), py::arg("seed"), py::arg("batches_per_epoch"),
           py::arg("initial_score"), py::arg("lag"))
      .def("reset", [](DistributedImportanceSampler& s) { s.reset(); })
      .def("draw",
           [](DistributedImportanceSampler& s, size_t b) -> std::optional<std::pair<at::Tensor, at::Tensor>> {
             if (!s.next(b)) return std::nullopt;
             auto batch = s.take();
             return std::make_pair(at::tensor(c10::ArrayRef<int64_t>(batch.indices)), batch.weights);
           })
      .def(
          "update",
          [](DistributedImportanceSampler& s, const at::Tensor& i, const at::Tensor& sc, double beta) {
            py::gil_scoped_release nogil;  // the collective calls back into Python
            s.update(i, sc, beta);
          },
          py::arg("indices"), py::arg("scores"), py::arg("beta") = 0.0)
      .def("probabilities", &DistributedImportanceSampler::probabilities)
      .def("scores", &DistributedImportanceSampler::scores)
      .def("taken", &DistributedImportanceSampler::taken)
      .def("state", &sampler_bytes<DistributedImportanceSampler>)
      .def("load_state", &sampler_from_bytes<DistributedImportanceSampler>);
  py::class_<DistributedTemperatureSampler>(m, "DistributedTemperatureSampler")
      .def(py::init<const at::Tensor&, TemperatureSchedule, std::shared_ptr<sgdx::dist::Communicator>,
                    uint64_t, int64_t, int64_t>(),
           py::arg("group_ids"), py::arg("schedule"), py::arg("comm"), py::arg("seed"),
           py::arg("batches_per_epoch"), py::arg("num_groups"))
      .def("reset", [](DistributedTemperatureSampler& s) { s.reset(); })
      .def("draw",
           [](DistributedTemperatureSampler& s, size_t b) -> std::optional<at::Tensor> {
             auto batch = s.next(b);
             if (!batch) return std::nullopt;
             std::vector<int64_t> idx(batch->begin(), batch->end());
             return at::tensor(c10::ArrayRef<int64_t>(idx));
           })
      .def("step", &DistributedTemperatureSampler::step)
      .def("current_tau", &DistributedTemperatureSampler::current_tau)
      .def("check_agreement",
           [](const DistributedTemperatureSampler& s) {
             py::gil_scoped_release nogil;
             s.check_agreement();
           })
      .def("state", &sampler_bytes<DistributedTemperatureSampler>)
      .def("load_state", &sampler_from_bytes<DistributedTemperatureSampler>);

  m.def("temperature_probs", &temperature_probs, py::arg("sizes"), py::arg("tau"));
  m.def("scalarization_weights", &scalarization_weights, py::arg("sizes"), py::arg("tau"));
  m.def("variance_factor", &variance_factor, py::arg("sizes"), py::arg("tau"));
  m.def("group_sizes", &group_sizes, py::arg("group_ids"), py::arg("num_groups") = 0);
  m.def("weighted_mean_loss", &weighted_mean_loss, py::arg("losses"), py::arg("weights"));
  m.def("sampling_quality", &sampling_quality, py::arg("grad_norms"), py::arg("probs"));
  m.def("effective_batch_increase", &effective_batch_increase, py::arg("scores"));
  m.def("long_tailed_indices", &long_tailed_indices, py::arg("labels"), py::arg("imbalance_ratio"),
        py::arg("seed") = 0);
  m.def("rsgd_probability", [](double gamma, double gamma0, double max_prob, int64_t step) {
    RSGDOptions o(1.0);
    o.gamma(gamma).gamma0(gamma0).max_prob(max_prob);
    return o.reinforcement_probability(step);
  });
  m.def("with_cuda", [] { return SGDX_WITH_CUDA != 0; });
  m.def("cpu_isa", [] { return std::string(sgdx::cpu_isa_name(sgdx::cpu_isa())); });
}
