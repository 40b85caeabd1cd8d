"""Starts one vae_ood_monitor node on several cameras.

    ros2 launch vae_ood_monitor monitor_cameras.launch.py cameras_file:=my_cameras.yaml

Parameters come from `params_file` (config/monitor.yaml: the defaults), then `cameras_file`
(config/monitor_cameras.yaml: `cameras`, and per camera its topic, transport, bundles and
overrides). Camera topics are parameters (`<camera>.image_topic`), not remappings, because
there is one subscription per listed camera.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("vae_ood_monitor")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the monitor node."),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "monitor.yaml"]),
            description="Parameters file of the monitor node (the defaults)."),
        DeclareLaunchArgument(
            "cameras_file",
            default_value=PathJoinSubstitution([share, "config", "monitor_cameras.yaml"]),
            description="The cameras: 'cameras' and per camera '<camera>.image_topic' etc."),
        Node(
            package="vae_ood_monitor",
            executable="vae_ood_monitor",
            name="vae_ood_monitor",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"), LaunchConfiguration("cameras_file")],
        ),
    ])
