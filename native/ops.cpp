// libtorch ops robustd needs that tch-rs does not bind with all their arguments. tch's generated C API calls
// `torch::leaky_relu(self)` at the default slope only; LeakyReLU at another slope (0.1, 0.2: detectors, GAN
// discriminators) would otherwise run on PReLU's kernel, whose backward also computes a weight gradient per element
// and reduces it: 5-6x the time of leaky_relu's backward on a 200x16x28x28 activation (PyTorch 2.11, 2 threads).
// Calling the ATen function keeps autograd: it dispatches through the same Autograd key as tch's own calls.
//
// Tensors cross as tch's handles (`at::Tensor*`, owned by the caller); a result is a new handle the caller owns.
// Exceptions never cross: the message comes back in `*error` (malloc'd; the caller frees it) and the result is null.

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

char* copy_message(const char* what) {
  char* out = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (out != nullptr) {
    std::strcpy(out, what);
  }
  return out;
}

}  // namespace

extern "C" {

at::Tensor* robustd_leaky_relu(const at::Tensor* x, double negative_slope, char** error) {
  try {
    return new at::Tensor(at::leaky_relu(*x, negative_slope));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

}  // extern "C"
