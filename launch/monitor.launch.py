"""Starts the vae_ood_monitor node on one camera.

    ros2 launch vae_ood_monitor monitor.launch.py camera_topic:=/camera/image_raw

Arguments override the parameters file (config/monitor.yaml by default).
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
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the monitor node."),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "monitor.yaml"]),
            description="Parameters file of the monitor node."),
        DeclareLaunchArgument(
            "model_bundle",
            default_value=PathJoinSubstitution([share, "models", "default"]),
            description="Detector bundle directory."),
        DeclareLaunchArgument(
            "camera_topic", default_value="/camera/image_raw",
            description="Camera image topic (for compressed transport, '<camera_topic>/compressed' is used)."),
        DeclareLaunchArgument("transport", default_value="raw", description="raw or compressed."),
        DeclareLaunchArgument(
            "score_threshold", default_value="100.0",
            description="Per-frame OOD threshold on the nonconformity score."),
        DeclareLaunchArgument("threads", default_value="1", description="Inference threads."),
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
                    "score_threshold": ParameterValue(LaunchConfiguration("score_threshold"), value_type=float),
                    "threads": ParameterValue(LaunchConfiguration("threads"), value_type=int),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                },
            ],
            remappings=[
                ("image", camera_topic),
                ("image/compressed", [camera_topic, "/compressed"]),
            ],
        ),
    ])
