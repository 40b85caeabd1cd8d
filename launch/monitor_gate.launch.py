"""Camera -> vae_ood_monitor -> ood_gate -> base.

    ros2 launch vae_ood_monitor monitor_gate.launch.py camera_topic:=/camera/image_raw \\
        cmd_vel_in:=/controller/cmd_vel cmd_vel_out:=/cmd_vel

The controller publishes on `cmd_vel_in`; the gate forwards to `cmd_vel_out` only while the
monitor's verdict is in-distribution and fresh, and publishes zero velocity otherwise.
Parameters come from the two parameters files; the other arguments override single parameters
only when given.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

MONITOR_OVERRIDES = {"model_bundle": str, "transport": str, "recovery": str, "use_sim_time": bool, "managed": bool}
GATE_OVERRIDES = {"input_type": str, "watchdog_timeout": float, "use_sim_time": bool, "managed": bool}


def typed(kind, text):
    return text.lower() in ("true", "1", "yes") if kind is bool else kind(text)


def overrides(context, table):
    out = {}
    for name, kind in table.items():
        text = LaunchConfiguration(name).perform(context)
        if text != "":
            out[name] = typed(kind, text)
    return out


def launch_setup(context):
    camera_topic = LaunchConfiguration("camera_topic")
    return [
        Node(
            package="vae_ood_monitor",
            executable="vae_ood_monitor",
            name="vae_ood_monitor",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"), overrides(context, MONITOR_OVERRIDES)],
            remappings=[
                ("image", camera_topic),
                ("image/compressed", [camera_topic, "/compressed"]),
            ],
        ),
        Node(
            package="vae_ood_monitor",
            executable="ood_gate",
            name="ood_gate",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("gate_params_file"), overrides(context, GATE_OVERRIDES)],
            remappings=[
                ("ood", "vae_ood_monitor/ood"),
                ("cmd_vel_in", LaunchConfiguration("cmd_vel_in")),
                ("cmd_vel_out", LaunchConfiguration("cmd_vel_out")),
            ],
        ),
    ]


def generate_launch_description():
    share = FindPackageShare("vae_ood_monitor")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of both nodes."),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "monitor.yaml"]),
            description="Parameters file of the monitor node."),
        DeclareLaunchArgument(
            "gate_params_file",
            default_value=PathJoinSubstitution([share, "config", "gate.yaml"]),
            description="Parameters file of the gate node."),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="Camera image topic."),
        DeclareLaunchArgument("cmd_vel_in", default_value="/cmd_vel_raw", description="Controller's velocity commands."),
        DeclareLaunchArgument("cmd_vel_out", default_value="/cmd_vel", description="Gated commands to the base."),
        DeclareLaunchArgument("model_bundle", default_value="", description="Detector bundle directory (empty: params file)."),
        DeclareLaunchArgument("transport", default_value="", description="raw or compressed (empty: params file)."),
        DeclareLaunchArgument("recovery", default_value="", description="auto or manual (empty: params file)."),
        DeclareLaunchArgument(
            "managed", default_value="",
            description="true: both nodes are lifecycle nodes, for a lifecycle manager (empty: params files)."),
        DeclareLaunchArgument("input_type", default_value="", description="twist or twist_stamped (empty: gate params file)."),
        DeclareLaunchArgument("watchdog_timeout", default_value="", description="Verdict age (s) treated as OOD (empty: gate params file)."),
        DeclareLaunchArgument("use_sim_time", default_value="", description="Use /clock, both nodes (empty: params files)."),
        OpaqueFunction(function=launch_setup),
    ])
