"""Camera -> vae_ood_monitor -> ood_gate -> base.

    ros2 launch vae_ood_monitor monitor_gate.launch.py camera_topic:=/camera/image_raw \\
        cmd_vel_in:=/controller/cmd_vel cmd_vel_out:=/cmd_vel

The controller publishes on `cmd_vel_in`; the gate forwards to `cmd_vel_out` only while the
monitor's verdict is in-distribution and fresh, and publishes zero velocity otherwise.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("vae_ood_monitor")
    camera_topic = LaunchConfiguration("camera_topic")
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
        DeclareLaunchArgument(
            "model_bundle",
            default_value=PathJoinSubstitution([share, "models", "default"]),
            description="Detector bundle directory."),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="Camera image topic."),
        DeclareLaunchArgument("transport", default_value="raw", description="raw or compressed."),
        DeclareLaunchArgument("cmd_vel_in", default_value="/cmd_vel_raw", description="Controller's velocity commands."),
        DeclareLaunchArgument("cmd_vel_out", default_value="/cmd_vel", description="Gated commands to the base."),
        DeclareLaunchArgument("input_type", default_value="twist", description="twist or twist_stamped."),
        DeclareLaunchArgument("watchdog_timeout", default_value="0.5", description="Verdict age (s) treated as OOD."),
        DeclareLaunchArgument("recovery", default_value="auto", description="auto or manual (~/reset service)."),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock."),
        Node(
            package="vae_ood_monitor",
            executable="vae_ood_monitor",
            name="vae_ood_monitor",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "model_bundle": LaunchConfiguration("model_bundle"),
                    "transport": LaunchConfiguration("transport"),
                    "recovery": LaunchConfiguration("recovery"),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                },
            ],
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
            parameters=[
                LaunchConfiguration("gate_params_file"),
                {
                    "input_type": LaunchConfiguration("input_type"),
                    "watchdog_timeout": ParameterValue(LaunchConfiguration("watchdog_timeout"), value_type=float),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                },
            ],
            remappings=[
                ("ood", "vae_ood_monitor/ood"),
                ("cmd_vel_in", LaunchConfiguration("cmd_vel_in")),
                ("cmd_vel_out", LaunchConfiguration("cmd_vel_out")),
            ],
        ),
    ])
