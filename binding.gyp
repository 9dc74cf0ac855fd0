{
  "targets": [
    {
      "target_name": "vfsk_native",
      "sources": [
        "native/src/addon.cc",
        "native/src/errors.cc",
        "native/src/sockets.cc",
        "native/src/memory.cc",
        "native/src/poll.cc",
        "native/src/fsops.cc",
        "native/src/io.cc",
        "native/src/sandbox.cc",
        "native/src/seccomp.cc",
        "native/src/ring.cc",
        "native/src/io_pool.cc",
        "native/src/fast_fuse.cc",
        "native/src/process.cc",
        "native/src/dirents.cc"
      ],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
