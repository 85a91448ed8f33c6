"""Fixed texts of the method: negative prompt (paper Table 8) and the released boosters' instruction."""

# Paper Table 8: the fixed negative prompt used in evaluation (as good as adaptive ones, Table 4).
NEGATIVE_PROMPT = (
    "The video is not of a high quality, it has a low resolution, and the audio quality is not clear. "
    "Strange motion trajectory, a poor composition and deformed video, low resolution, duplicate and ugly, "
    "strange body structure, long and strange neck, bad teeth, bad eyes, bad limbs, bad hands, rotating "
    "camera, blurry camera, shaking camera. Deformation, low-resolution, blurry, ugly, distortion."
)

# Verbatim instruction of the released boosters (jiyatai/Prompt_A_Video_CV and _OS): an interface
# constant, the released models expect exactly these bytes.
RELEASED_INSTRUCTION = (
    "You need to refine user's input prompt. The user's input prompt is used for video generation task. "
    "You need to refine the user's prompt to make it more suitable for the task.\n"
    "You will be prompted by people looking to create detailed, amazing videos. The way to accomplish "
    "this is to take their short prompts and make them extremely detailed and descriptive. You will only "
    "ever output a single video description per user request.\n"
    "You should refactor the entire description to integrate the suggestions. Original prompt:\n"
)
RELEASED_SUFFIX = "\nNew prompt:\n"
