"""Starts the vae_ood_monitor node on one camera.

    ros2 launch vae_ood_monitor monitor.launch.py camera_topic:=/camera/image_raw

Parameters come from `params_file` (config/monitor.yaml by default). The other arguments
override single parameters only when given; left empty they keep the file's values.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Launch argument -> node parameter of the same name, with its type.
OVERRIDES = {"model_bundle": str, "transport": str, "score_threshold": float, "threads": int, "use_sim_time": bool,
             "managed": bool}


def typed(kind, text):
    return text.lower() in ("true", "1", "yes") if kind is bool else kind(text)


def launch_setup(context):
    overrides = {}
    for name, kind in OVERRIDES.items():
        text = LaunchConfiguration(name).perform(context)
        if text != "":
            overrides[name] = typed(kind, text)
    camera_topic = LaunchConfiguration("camera_topic")
    return [
        Node(
            package="vae_ood_monitor",
            executable="vae_ood_monitor",
            name="vae_ood_monitor",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[
                ("image", camera_topic),
                ("image/compressed", [camera_topic, "/compressed"]),
            ],
        )
    ]


def generate_launch_description():
    share = FindPackageShare("vae_ood_monitor")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the monitor node."),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "monitor.yaml"]),
            description="Parameters file of the monitor node."),
        DeclareLaunchArgument(
            "camera_topic", default_value="/camera/image_raw",
            description="Camera image topic (for compressed transport, '<camera_topic>/compressed' is used)."),
        DeclareLaunchArgument("model_bundle", default_value="", description="Detector bundle directory (empty: params file)."),
        DeclareLaunchArgument("transport", default_value="", description="raw or compressed (empty: params file)."),
        DeclareLaunchArgument("score_threshold", default_value="", description="Per-frame OOD threshold, uncalibrated bundles (empty: params file)."),
        DeclareLaunchArgument("threads", default_value="", description="Inference threads (empty: params file)."),
        DeclareLaunchArgument("use_sim_time", default_value="", description="Use /clock (empty: params file)."),
        DeclareLaunchArgument(
            "managed", default_value="",
            description="true: a lifecycle node, unconfigured until a lifecycle manager (e.g. nav2's) configures and activates it (empty: params file)."),
        OpaqueFunction(function=launch_setup),
    ])
