import pytest

from wan_sft.config import InputError, check_video_shape


@pytest.mark.parametrize("frames,height,width", [(81, 896, 480), (5, 32, 32), (9, 160, 96)])
def test_valid_shapes_pass(frames, height, width):
    check_video_shape(frames, height, width)


@pytest.mark.parametrize("frames,height,width,message", [
    (80, 896, 480, "--num_frames 80 is invalid: Wan2.2 needs 4k+1 frames with k >= 1 (e.g. 77 or 81)"),
    (1, 896, 480, "--num_frames 1 is invalid: Wan2.2 needs 4k+1 frames with k >= 1 (e.g. 5 or 9)"),
    (81, 880, 480, "--height 880 is invalid: it must be a multiple of 32 (e.g. 864 or 896)"),
    (81, 896, 464, "--width 464 is invalid: it must be a multiple of 32 (e.g. 448 or 480)"),
    (81, 896, 0, "--width 0 is invalid: it must be a multiple of 32 (e.g. 32 or 64)"),
])
def test_invalid_shapes_name_the_value_and_a_fix(frames, height, width, message):
    with pytest.raises(InputError) as error:
        check_video_shape(frames, height, width)
    assert str(error.value) == message
