# Source this file for the run-time and build environment:  source scripts/env.sh
#
# With a ROS 2 install already sourced (apt: /opt/ros/<distro>/setup.bash) it only limits the
# message packages r2r generates. Otherwise it points at the ROS 2 Jazzy wheels that
# scripts/bootstrap.sh installed into .venv/ and applies work-around 2: the wheels' librcl is
# linked against Python extension modules that lack a libpython dependency, so our binaries link
# libpython explicitly (build.rs reads VAE_OOD_LINK_PYTHON).
#
# It does NOT confine DDS to loopback: on a robot the node must reach other hosts. Tests, demo
# and benchmarks source scripts/loopback.sh for that.

_vae_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Message packages r2r generates bindings for (its build regenerates when this changes).
export IDL_PACKAGE_FILTER="builtin_interfaces;std_msgs;std_srvs;sensor_msgs;geometry_msgs;diagnostic_msgs;rcl_interfaces;rosgraph_msgs;unique_identifier_msgs;action_msgs;service_msgs;type_description_interfaces;lifecycle_msgs"

if [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ] && [ -z "${VAE_OOD_WHEEL_PREFIX:-}" ]; then
  : # a real ROS 2 install is sourced: use it as it is
else
  _vae_venv="$_vae_root/.venv"
  if [ ! -x "$_vae_venv/bin/python" ]; then
    echo "scripts/env.sh: $_vae_venv is missing; run scripts/bootstrap.sh (or make test) first" >&2
  else
    export VAE_OOD_WHEEL_PREFIX="$_vae_venv"
    export ROS_DISTRO=jazzy
    export AMENT_PREFIX_PATH="$_vae_venv"
    export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
    _vae_libs="$_vae_venv/lib"
    for _d in "$_vae_venv"/lib/python3.11/site-packages/ros_*.libs; do _vae_libs="$_vae_libs:$_d"; done
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_vae_venv/lib:"*) ;;
      *) export LD_LIBRARY_PATH="$_vae_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    VAE_OOD_LINK_PYTHON="$("$_vae_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
    export VAE_OOD_LINK_PYTHON
    case ":$PATH:" in *":$_vae_venv/bin:"*) ;; *) export PATH="$_vae_venv/bin:$PATH" ;; esac
    unset _d _vae_libs
  fi
  unset _vae_venv
fi
unset _vae_root
